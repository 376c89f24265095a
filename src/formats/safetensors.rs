//! safetensors files (docs/formats/safetensors.md#layout): `u64 LE N`, an N-byte JSON header, then the tensors'
//! bytes, each served in place by `pread` (never copied or decoded). A sharded model (the
//! `*.safetensors.index.json` with its shards beside it, docs/formats/safetensors.md#sharded-checkpoints) is one tree. The
//! reference reader's validation rules (docs/formats/safetensors.md#header-and-offset-validation) are enforced: a refusal names the
//! rule, as the reference reader's error does.

use crate::dtype::DType;
use crate::error::OpenError;
use crate::formats::ReadOptions;
use crate::model::{Extent, Model, Tensor};
use crate::quant;
use crate::source::{Blob, Dir};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The reference reader refuses longer headers.
const MAX_HEADER: u64 = 100_000_000;
/// Largest sharded index read.
const MAX_INDEX: u64 = 64 << 20;

/// True if `head` (the first bytes of a `len`-byte file) starts like a safetensors file: a
/// length, then a JSON object. A JSON text may hold `{` at byte 8 as well; its first 8 bytes
/// then read as a length past the end of the file.
pub fn sniff(head: &[u8], len: u64) -> bool {
    let first_object = |bytes: &[u8]| bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let Some((length, header)) = head.split_first_chunk::<8>() else { return false };
    first_object(header) && (!first_object(head) || u64::from_le_bytes(*length) <= len - 8)
}

/// One tensor entry of a header.
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    begin: u64,
    end: u64,
}

/// A validated header: its entries in header order, `__metadata__`, and where the byte
/// buffer starts in the file.
struct Header {
    entries: Vec<Entry>,
    metadata: Option<Map<String, Value>>,
    data_start: u64,
}

/// A refusal naming the reference reader's error for the rule broken.
fn refuse(rule: &str, detail: impl std::fmt::Display) -> OpenError {
    OpenError::corrupt(format!("safetensors: {rule}: {detail}"))
}

fn parse(blob: &Blob) -> Result<Header, OpenError> {
    let len = blob.len();
    let unreadable = |e: crate::error::ReadError| OpenError::unreadable(e.to_string());
    if len < 8 {
        return Err(refuse("HeaderTooSmall", format!("the file has {len} bytes, fewer than the 8 of the header length")));
    }
    let n = u64::from_le_bytes(blob.read_vec(0, 8).map_err(unreadable)?.try_into().unwrap_or_default());
    if n > MAX_HEADER {
        return Err(refuse("HeaderTooLarge", format!("header length {n} is over the format's limit of {MAX_HEADER} bytes")));
    }
    if 8 + n > len {
        return Err(refuse("InvalidHeaderLength", format!("header length {n} runs past the end of the {len}-byte file")));
    }
    let text = blob.read_vec(8, n).map_err(unreadable)?;
    let text = std::str::from_utf8(&text).map_err(|e| refuse("InvalidHeader", format!("the header is not UTF-8 ({e})")))?;
    let malformed = |detail: String| refuse("InvalidHeaderDeserialization", detail);
    let header: Map<String, Value> = serde_json::from_str(text).map_err(|e| malformed(format!("the header is not a JSON object ({e})")))?;
    let mut metadata = None;
    let mut entries = Vec::with_capacity(header.len());
    for (name, value) in header {
        if name == "__metadata__" {
            metadata = match value {
                Value::Null => None,
                Value::Object(map) if map.values().all(Value::is_string) => Some(map),
                _ => return Err(malformed("__metadata__ is not a map of strings".into())),
            };
            continue;
        }
        let field = |key: &str| value.get(key).ok_or_else(|| malformed(format!("tensor {name:?} has no {key}")));
        let numbers = |key: &str| -> Result<Vec<u64>, OpenError> {
            field(key)?
                .as_array()
                .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
                .ok_or_else(|| malformed(format!("{key} of tensor {name:?} is not a list of non-negative integers")))
        };
        let dtype_name = field("dtype")?.as_str().ok_or_else(|| malformed(format!("dtype of tensor {name:?} is not a string")))?;
        let dtype = DType::from_safetensors(dtype_name).ok_or_else(|| malformed(format!("tensor {name:?} has unknown dtype {dtype_name:?}")))?;
        let shape = numbers("shape")?;
        let [begin, end] = numbers("data_offsets")?[..] else {
            return Err(malformed(format!("data_offsets of tensor {name:?} is not [begin, end]")));
        };
        entries.push(Entry { name, dtype, shape, begin, end });
    }
    let buffer_end = validate(&entries)?;
    if (8 + n).checked_add(buffer_end) != Some(len) {
        return Err(refuse(
            "MetadataIncompleteBuffer",
            format!("the tensors end at byte {} but the file has {len} bytes", u128::from(8 + n) + u128::from(buffer_end)),
        ));
    }
    Ok(Header { entries, metadata, data_start: 8 + n })
}

/// The reference reader's checks, in its order: tensors sorted by offsets tile the buffer from
/// 0 with neither gap nor overlap, and each holds exactly its shape's bytes. Returns the
/// buffer's length.
fn validate(entries: &[Entry]) -> Result<u64, OpenError> {
    let mut by_offset: Vec<&Entry> = entries.iter().collect();
    by_offset.sort_by_key(|e| (e.begin, e.end));
    let mut start = 0u64;
    for e in by_offset {
        if e.begin != start || e.end < e.begin {
            return Err(refuse(
                "InvalidOffset",
                format!("tensor {:?} has data_offsets [{}, {}] where [{start}, ...] was due (a gap, an overlap or end < begin)", e.name, e.begin, e.end),
            ));
        }
        start = e.end;
        let overflow = || refuse("ValidationOverflow", format!("the size of tensor {:?} (shape {:?}) overflows", e.name, e.shape));
        let elements = Tensor::element_count(&e.shape).ok_or_else(overflow)?;
        let (per_block, block_bytes) = e.dtype.block();
        let bits = elements.checked_mul(block_bytes * 8).ok_or_else(overflow)? / per_block;
        if elements % per_block != 0 || bits % 8 != 0 {
            return Err(refuse("MisalignedSlice", format!("tensor {:?}: {elements} elements of {} fill no whole number of bytes", e.name, e.dtype.name())));
        }
        if e.end - e.begin != bits / 8 {
            return Err(refuse(
                "TensorInvalidInfo",
                format!("tensor {:?} of {} {:?} needs {} bytes, its data_offsets give {}", e.name, e.dtype.name(), e.shape, bits / 8, e.end - e.begin),
            ));
        }
    }
    Ok(start)
}

fn tensor(blob: &Blob, data_start: u64, e: Entry) -> Tensor {
    let bytes = Extent { blob: blob.clone(), offset: data_start + e.begin, len: e.end - e.begin };
    Tensor::named(&e.name, e.dtype, e.shape, Arc::new(bytes))
}

/// A single safetensors file; `dir` is where it lies (its config.json, docs/tree.md 7.3).
pub fn read(blob: &Blob, dir: Option<&Dir>, options: &ReadOptions) -> Result<Model, OpenError> {
    let header = parse(blob)?;
    let dir = dir.filter(|_| quant::may_be_quantized(header.entries.iter().map(|e| e.name.as_str())));
    let config = quantization_config(dir, header.metadata.as_ref());
    Ok(model_of(blob, header, &config, options))
}

/// A single safetensors file with the quantization config given (for the fuzz targets).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn read_with_config(blob: &Blob, config: &Value, options: &ReadOptions) -> Result<Model, OpenError> {
    Ok(model_of(blob, parse(blob)?, config, options))
}

fn model_of(blob: &Blob, header: Header, config: &Value, options: &ReadOptions) -> Model {
    let mut model = Model::default();
    if let Some(metadata) = header.metadata {
        model.info.insert("metadata".into(), Value::Object(metadata));
    }
    model.tensors = header.entries.into_iter().map(|e| tensor(blob, header.data_start, e)).collect();
    quant::dequantize(&mut model, config, &options.cache);
    model
}

/// Largest config file read for its quantization config.
const MAX_CONFIG: u64 = 16 << 20;

/// The quantization config of a model (docs/formats/quantized.md#recognising-a-scheme): the
/// `quantization_config` (or mlx-lm's `quantization`) of the `config.json` beside it, else a
/// GPTQ `quantize_config.json` beside it, else a `quantization_config` JSON string in the
/// header's metadata; `Null` if none.
fn quantization_config(dir: Option<&Dir>, metadata: Option<&Map<String, Value>>) -> Value {
    let json_file = |name: &str| -> Option<Value> {
        let blob = dir?.open(name).ok().filter(|b| b.len() <= MAX_CONFIG)?;
        serde_json::from_slice(&blob.read_vec(0, blob.len()).ok()?).ok()
    };
    let in_config = json_file("config.json").and_then(|c| ["quantization_config", "quantization"].iter().find_map(|k| c.get(*k).filter(|v| v.is_object()).cloned()));
    if let Some(config) = in_config {
        return config;
    }
    if let Some(mut config) = json_file("quantize_config.json").filter(Value::is_object) {
        if config.get("quant_method").is_none() {
            config["quant_method"] = json!("gptq");
        }
        return config;
    }
    metadata.and_then(|m| m.get("quantization_config")).and_then(Value::as_str).and_then(|text| serde_json::from_str(text).ok()).unwrap_or(Value::Null)
}

/// The shard names of a sharded index's `weight_map` (tensor name -> shard file), in order of
/// first appearance, and the index itself.
fn weight_map(index: &Blob) -> Result<(Value, Vec<String>), OpenError> {
    let bad = |why: &str| OpenError::corrupt(format!("safetensors index: {why}"));
    if index.len() > MAX_INDEX {
        return Err(bad("over 64 MiB"));
    }
    let text = index.read_vec(0, index.len()).map_err(|e| OpenError::unreadable(e.to_string()))?;
    let json: Value = serde_json::from_slice(&text).map_err(|_| bad("not JSON"))?;
    let map = json.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad("no weight_map object"))?;
    let mut shards: Vec<String> = Vec::new();
    for (name, shard) in map {
        let shard = shard.as_str().ok_or_else(|| bad(&format!("the shard of {name:?} is not a file name")))?;
        if !shards.iter().any(|s| s == shard) {
            shards.push(shard.to_string());
        }
    }
    Ok((json, shards))
}

/// True if `index` is a sharded safetensors index: its `weight_map` names a shard beside it
/// (in `dir`) that is a safetensors file (a Keras sharded `.weights.json` names HDF5 shards).
pub fn indexes_safetensors(index: &Blob, dir: &Dir) -> bool {
    let Ok((_, shards)) = weight_map(index) else { return false };
    shards.first().and_then(|name| dir.open(name).ok()).is_some_and(|blob| sniff(&blob.read_vec(0, blob.len().min(64)).unwrap_or_default(), blob.len()))
}

/// A sharded model: the index and the shards beside it in `dir`, as one tree. Every tensor of
/// every shard must be listed in the index, in that shard (docs/formats/safetensors.md#sharded-checkpoints).
pub fn read_sharded(index: &Blob, dir: &Dir, options: &ReadOptions) -> Result<Model, OpenError> {
    let (json, mut shard_names) = weight_map(index)?;
    shard_names.sort();
    let mut model = Model::default();
    if let Some(metadata) = json.get("metadata") {
        model.info.insert("metadata".into(), metadata.clone());
    }
    let mut found: std::collections::HashMap<String, Tensor> = std::collections::HashMap::new();
    let mut shards_info = Vec::new();
    for name in &shard_names {
        let blob = dir.open(name).map_err(|e| match e {
            OpenError::Corrupt(_) => OpenError::corrupt(format!("safetensors index: shard name {name:?} is not a file beside the index")),
            other => OpenError::unreadable(format!("shard {name}: {other}")),
        })?;
        let in_shard = |e: OpenError| match e {
            OpenError::Corrupt(why) => OpenError::Corrupt(format!("shard {name}: {why}")),
            other => other,
        };
        let header = parse(&blob).map_err(in_shard)?;
        let mut info = json!({"file": name, "tensors": header.entries.len()});
        if let Some(metadata) = header.metadata {
            info["metadata"] = Value::Object(metadata);
        }
        shards_info.push(info);
        for e in header.entries {
            let listed = json["weight_map"].get(&e.name).and_then(Value::as_str);
            if listed != Some(name.as_str()) {
                let why = match listed {
                    Some(other) => format!("the index puts it in {other}"),
                    None => "the index's weight_map does not list it".into(),
                };
                return Err(OpenError::corrupt(format!("shard {name} holds tensor {:?}, but {why}", e.name)));
            }
            found.insert(e.name.clone(), tensor(&blob, header.data_start, e));
        }
    }
    for (name, shard) in json["weight_map"].as_object().into_iter().flatten() {
        let tensor = found.remove(name).ok_or_else(|| {
            OpenError::corrupt(format!("the index puts tensor {name:?} in shard {}, which does not hold it", shard.as_str().unwrap_or_default()))
        })?;
        model.tensors.push(tensor);
    }
    model.info.insert("shards".into(), Value::Array(shards_info));
    let dir = Some(dir).filter(|_| quant::may_be_quantized(model.tensors.iter().map(|t| t.name.as_str())));
    quant::dequantize(&mut model, &quantization_config(dir, None), &options.cache);
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ReadOptions {
        ReadOptions { cache: Arc::new(crate::cache::ChunkCache::new(1 << 20)) }
    }

    fn file(header: &str, data: &[u8]) -> Blob {
        Blob::Memory(Arc::new([&(header.len() as u64).to_le_bytes()[..], header.as_bytes(), data].concat()))
    }

    #[test]
    fn sniffing_tells_a_header_from_json_text() {
        let st = [&123u64.to_le_bytes()[..], b"{\"a\":{}}"].concat();
        // 123 is '{': the length's first byte looks like JSON, but the length fits the file.
        assert!(sniff(&st, 131));
        assert!(!sniff(b"{ \"x\": {\"weight_map\": {}}}", 27));
        assert!(!sniff(b"\x10\0\0\0\0\0\0\0[]", 10));
    }

    #[test]
    fn zero_size_tensors_may_share_an_offset_and_order_is_the_header_s() {
        let blob = file(
            r#"{"b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"U8","shape":[],"data_offsets":[4,5]}}"#,
            &[1, 0, 0, 0, 9],
        );
        let model = read(&blob, None, &options()).unwrap();
        let names: Vec<&str> = model.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "s"]);
        assert_eq!(model.info["metadata"], json!({"k": "v"}));
        let mut byte = [0u8];
        model.tensors[2].bytes.read_at(0, &mut byte).unwrap();
        assert_eq!(byte, [9]);
    }

    #[test]
    fn packed_types_count_bits() {
        let ok = file(r#"{"f4":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]},"f6":{"dtype":"F6_E3M2","shape":[8],"data_offsets":[3,9]}}"#, &[0; 9]);
        assert!(read(&ok, None, &options()).is_ok());
        let odd = file(r#"{"f4":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#, &[0; 2]);
        assert!(read(&odd, None, &options()).err().unwrap().to_string().starts_with("safetensors: MisalignedSlice"));
    }
}
