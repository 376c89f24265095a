//! TensorFlow.js models (docs/formats/tfjs.md): `model.json` and the weight shards beside it.
//! Each group of the weights manifest is the concatenation of its shard files; its weights lie
//! back to back in manifest order and are served in place, a weight that straddles two shards
//! read from both. Quantized weights (uint8, uint16 affine; float16) keep their stored bytes in
//! `.raw` and show the float32 values TF.js computes in `.npy` (docs/tree.md 7.2). A layers
//! model's Keras config is `config.json`; a graph model's GraphDef is `graph.json`.

use super::widened::{self, Decoding};
use crate::dtype::DType;
use crate::error::{OpenError, ReadError};
use crate::model::{Location, Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use crate::source::{Blob, Dir};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Largest `model.json` read (a graph model's GraphDef is inline).
const MAX_JSON: u64 = 256 << 20;
/// Most manifest entries and shard files, all groups together.
const MAX_ITEMS: usize = 1 << 20;
/// Most elements of a string weight whose lengths are walked at mount.
const MAX_STRING_ELEMENTS: u64 = 1 << 20;

/// `true` for a JSON object with a TF.js weights manifest.
pub fn sniff(blob: &Blob) -> bool {
    blob.len() <= MAX_JSON
        && blob.read_vec(0, blob.len()).is_ok_and(|bytes| bytes.windows(17).any(|w| w == b"\"weightsManifest\""))
}

fn corrupt(why: impl std::fmt::Display) -> OpenError {
    OpenError::Corrupt(format!("TensorFlow.js model is damaged: {why}"))
}

/// A group's shard files end to end, read without copying them together.
struct Shards {
    files: Vec<Blob>,
    /// Where each file starts in the group.
    starts: Vec<u64>,
    len: u64,
}

impl Shards {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(ReadError::OutOfBounds);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = self.starts.partition_point(|&start| start <= at) - 1;
            let within = at - self.starts[i];
            let n = ((self.files[i].len() - within) as usize).min(buf.len() - done);
            if n == 0 {
                return Err(ReadError::OutOfBounds);
            }
            self.files[i].read_at(within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

/// One weight's bytes in its group.
struct InGroup {
    shards: Arc<Shards>,
    offset: u64,
    len: u64,
}

impl TensorBytes for InGroup {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.shards.read_at(self.offset + offset, buf)
    }
    /// Where the weight lies in one shard file; `None` for one that straddles two.
    fn location(&self) -> Option<Location> {
        let i = self.shards.starts.partition_point(|&start| start <= self.offset).checked_sub(1)?;
        let within = self.offset - self.shards.starts[i];
        (within + self.len <= self.shards.files[i].len()).then(|| self.shards.files[i].location(within, self.len)).flatten()
    }
}

pub fn read(blob: &Blob, dir: Option<&Dir>) -> Result<Model, OpenError> {
    if blob.len() > MAX_JSON {
        return Err(corrupt(format!("model.json is over {MAX_JSON} bytes")));
    }
    let bytes = blob.read_vec(0, blob.len()).map_err(|e| OpenError::unreadable(e.to_string()))?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("model.json is not JSON: {e}")))?;
    let manifest = json.get("weightsManifest").and_then(Value::as_array).ok_or_else(|| corrupt("weightsManifest is not a list"))?;
    let dir = dir.ok_or_else(|| OpenError::unreadable("a TensorFlow.js model.json needs its weight shards beside it (it cannot be read from standard input)"))?;

    let mut model = Model::default();
    let mut files = Vec::new();
    let mut unused = Map::new();
    let mut items = 0usize;
    for (index, group) in manifest.iter().enumerate() {
        let paths = group.get("paths").and_then(Value::as_array).ok_or_else(|| corrupt(format!("group {index} has no paths")))?;
        let entries = group.get("weights").and_then(Value::as_array).ok_or_else(|| corrupt(format!("group {index} has no weights")))?;
        items += paths.len() + entries.len();
        if items > MAX_ITEMS {
            return Err(corrupt(format!("more than {MAX_ITEMS} weights and shards")));
        }
        let mut shards = Shards { files: Vec::new(), starts: Vec::new(), len: 0 };
        for path in paths {
            let path = path.as_str().ok_or_else(|| corrupt(format!("group {index} has a path that is not a string")))?;
            let file = dir.open_below(path).map_err(|e| OpenError::unreadable(format!("TensorFlow.js weight shard {path}: {e}")))?;
            shards.starts.push(shards.len);
            shards.len += file.len();
            shards.files.push(file);
            files.push(path.to_string());
        }
        if let Some(bytes) = read_group(&mut model, Arc::new(shards), entries, index)? {
            unused.insert(index.to_string(), json!(bytes));
        }
    }

    let info = &mut model.info;
    // `format` is wfs's own key in `info.json`: the model's says which kind of TF.js model.
    info.insert("model_format".into(), json.get("format").cloned().unwrap_or(Value::Null));
    for key in ["generatedBy", "convertedBy"] {
        info.insert(key.into(), json.get(key).cloned().unwrap_or(Value::Null));
    }
    let topology = json.get("modelTopology");
    for key in ["keras_version", "backend"] {
        if let Some(value) = topology.and_then(|t| t.get(key)) {
            info.insert(key.into(), value.clone());
        }
    }
    for key in ["userDefinedMetadata", "signature"] {
        if let Some(value) = json.get(key) {
            info.insert(key.into(), value.clone());
        }
    }
    info.insert("weight_files".into(), json!(files));
    // Bytes of a group's shards past its last weight, by group index: damage, shown not refused.
    if !unused.is_empty() {
        info.insert("unused_bytes".into(), Value::Object(unused));
    }
    match topology {
        // A layers model's topology wraps the Keras model config (`model.to_json()`).
        Some(t) if json.get("format").and_then(Value::as_str) != Some("graph-model") && t.get("model_config").is_some() => {
            model.add_json(vec!["config.json".into()], &t["model_config"]);
        }
        Some(t) if t.get("node").is_some() => model.add_json(vec!["graph.json".into()], t),
        Some(t) => model.add_json(vec!["config.json".into()], t),
        None => {}
    }
    Ok(model)
}

/// The weights of one group; returns the bytes its shards hold past its last weight, if any.
fn read_group(model: &mut Model, shards: Arc<Shards>, entries: &[Value], group: usize) -> Result<Option<u64>, OpenError> {
    let mut at = 0u64;
    for entry in entries {
        let name = entry.get("name").and_then(Value::as_str).ok_or_else(|| corrupt(format!("a weight of group {group} has no name")))?;
        let skip = |model: &mut Model, reason: String| model.skipped.push(SkippedTensor::new(TensorId::Name(name.to_string()), reason));
        let shape: Option<Vec<u64>> = entry.get("shape").and_then(Value::as_array).and_then(|dims| dims.iter().map(Value::as_u64).collect());
        let shape = shape.ok_or_else(|| corrupt(format!("weight {name}'s shape is not a list of sizes")))?;
        let elements = Tensor::element_count(&shape).ok_or_else(|| corrupt(format!("weight {name}'s shape overflows")))?;
        let dtype = entry.get("dtype").and_then(Value::as_str).unwrap_or_default();
        let quantization = entry.get("quantization");
        let stored = quantization.map_or(dtype, |q| q.get("dtype").and_then(Value::as_str).unwrap_or_default());
        let size = match stored {
            "float32" | "int32" => elements.checked_mul(4),
            "bool" | "uint8" => Some(elements),
            "uint16" | "float16" => elements.checked_mul(2),
            "complex64" => elements.checked_mul(8),
            "string" => Some(string_size(&shards, at, elements).map_err(|e| corrupt(format!("string weight {name}: {e}")))?),
            other => return Err(corrupt(format!("weight {name} has dtype {other:?}, which TF.js does not write"))),
        };
        let size = size.ok_or_else(|| corrupt(format!("weight {name}'s size overflows")))?;
        let Some(end) = at.checked_add(size).filter(|&end| end <= shards.len) else {
            skip(model, format!("its {size} bytes at {at} lie past the end of its group's shards ({} bytes)", shards.len));
            at = shards.len;
            continue;
        };
        let bytes: Arc<dyn TensorBytes> = Arc::new(InGroup { shards: shards.clone(), offset: at, len: size });
        at = end;
        let tensor = match (stored, quantization) {
            ("string", _) => {
                skip(model, "string weights are not shown".into());
                continue;
            }
            ("float32", None) => Tensor::named(name, DType::F32, shape, bytes),
            ("int32", None) => Tensor::named(name, DType::I32, shape, bytes),
            ("bool", None) => Tensor::named(name, DType::Bool, shape, bytes),
            ("complex64", None) => Tensor::named(name, DType::C64, shape, bytes),
            (_, Some(q)) => {
                let original = q.get("original_dtype").and_then(Value::as_str).unwrap_or(dtype);
                let decoding = match stored {
                    "float16" => Decoding::F16,
                    _ => {
                        let number = |key: &str| q.get(key).and_then(Value::as_f64).ok_or_else(|| corrupt(format!("weight {name}'s quantization has no {key}")));
                        let bytes = if stored == "uint8" { 1 } else { 2 };
                        Decoding::Affine { bytes, scale: number("scale")?, min: number("min")?, round: original == "int32" }
                    }
                };
                let stored: &'static str = match stored {
                    "uint8" => "uint8",
                    "uint16" => "uint16",
                    "float16" => "float16",
                    other => return Err(corrupt(format!("weight {name} is quantized to {other:?}, which TF.js does not write"))),
                };
                widened::tensor(name, stored, shape, bytes, decoding).expect("the size follows from the shape")
            }
            (other, None) => return Err(corrupt(format!("weight {name} has dtype {other:?} without quantization"))),
        };
        model.tensors.push(tensor);
    }
    Ok((at < shards.len).then_some(shards.len - at))
}

/// Bytes of a string weight at `at`: each element a u32 length and its bytes.
fn string_size(shards: &Shards, at: u64, elements: u64) -> Result<u64, String> {
    if elements > MAX_STRING_ELEMENTS {
        return Err(format!("{elements} elements (at most {MAX_STRING_ELEMENTS} are walked)"));
    }
    let mut end = at;
    for _ in 0..elements {
        let mut len = [0u8; 4];
        shards.read_at(end, &mut len).map_err(|_| "its lengths run past the shards".to_string())?;
        end = end.checked_add(4 + u64::from(u32::from_le_bytes(len))).ok_or("its lengths overflow")?;
    }
    Ok(end - at)
}
