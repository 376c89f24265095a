//! Core ML models (docs/formats/coreml.md): a `.mlmodel` protobuf and an `.mlpackage`
//! directory. A NeuralNetwork's layers hold their weights inline (`WeightParams`): each is a
//! tensor `<layer>/<field>` (`fc/weights`), shaped from its layer's parameters and served in
//! place from the file. An ML Program (the `.mlpackage` form) keeps its constants in
//! `weights/weight.bin`, each behind a 64-byte header that is checked; every op attribute that
//! points there is a tensor named by the op's output. Layers or ops go to `graph.json`.
//!
//! The protobuf is read whole into memory at mount (a NeuralNetwork holds its weights inline,
//! but the walk keeps only their offsets); tensor bytes are read from the file on demand.

use super::widened::{self, BitOrder, Decoding, PackedValues};
use super::wire::read_varint;
use crate::dtype::DType;
use crate::error::OpenError;
use crate::model::{Extent, InMemory, Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use crate::source::{Blob, Dir};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Largest `.mlmodel` read (protobuf's own limit).
const MAX_MODEL: u64 = 2 << 30;
/// Deepest nesting of pipelines, and of blocks inside MIL ops.
const MAX_DEPTH: usize = 16;
/// Most layers, ops and weights together.
const MAX_ITEMS: usize = 1 << 22;
/// `blob_metadata.sentinel` of the MIL blob file (docs/formats/coreml.md#weightbin).
const BLOB_SENTINEL: u32 = 0xDEAD_BEEF;

/// `Model`'s field numbers of the model types whose weights wfs reads.
const PIPELINE_CLASSIFIER: u32 = 200;
const PIPELINE_REGRESSOR: u32 = 201;
const PIPELINE: u32 = 202;
const NEURAL_NETWORK_REGRESSOR: u32 = 303;
const NEURAL_NETWORK_CLASSIFIER: u32 = 403;
const NEURAL_NETWORK: u32 = 500;
const ML_PROGRAM: u32 = 502;

/// `true` if the file starts like a Core ML `Model`: a small `specificationVersion`, then only
/// `Model` fields up to a model type wfs knows.
pub fn sniff(blob: &Blob) -> bool {
    let Ok(head) = blob.read_vec(0, blob.len().min(64)) else { return false };
    let mut pos = 0;
    if read_varint(&head, &mut pos) != Some(0x08) || !read_varint(&head, &mut pos).is_some_and(|v| (1..=20).contains(&v)) {
        return false;
    }
    // Walk the top-level fields, reading only their keys and lengths.
    let mut at = pos as u64;
    for _ in 0..16 {
        let Ok(bytes) = blob.read_vec(at, (blob.len() - at).min(20)) else { return false };
        let mut pos = 0;
        let Some(key) = read_varint(&bytes, &mut pos) else { return false };
        let number = key >> 3;
        match (number, key & 7) {
            (10, 0) => {
                let Some(_) = read_varint(&bytes, &mut pos) else { return false };
                at += pos as u64;
            }
            (2, 2) => {
                let Some(len) = read_varint(&bytes, &mut pos) else { return false };
                at = match (at + pos as u64).checked_add(len) {
                    Some(end) if end <= blob.len() => end,
                    _ => return false,
                };
            }
            (n, 2) => return (200..=202).contains(&n) || (300..=304).contains(&n) || (400..=404).contains(&n) || (500..=502).contains(&n) || n >= 555,
            _ => return false,
        }
        if at >= blob.len() {
            return false;
        }
    }
    false
}

fn corrupt(why: impl std::fmt::Display) -> OpenError {
    OpenError::Corrupt(format!("Core ML model is damaged: {why}"))
}

/// One field of a protobuf message held in memory.
enum Val<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    /// The field's bytes and their offset in the file.
    Bytes(&'a [u8], u64),
}

/// The fields of a message in memory; `base` is its offset in the file.
fn fields<'a>(data: &'a [u8], base: u64) -> Result<Vec<(u32, Val<'a>)>, OpenError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let key = read_varint(data, &mut pos).ok_or_else(|| corrupt(format!("a malformed field key at byte {}", base + pos as u64)))?;
        let number = u32::try_from(key >> 3).ok().filter(|&n| n > 0).ok_or_else(|| corrupt(format!("a bad field number at byte {}", base + pos as u64)))?;
        let value = match key & 7 {
            0 => Val::Varint(read_varint(data, &mut pos).ok_or_else(|| corrupt("a malformed varint"))?),
            1 => {
                pos = pos.checked_add(8).filter(|&end| end <= data.len()).ok_or_else(|| corrupt("a fixed64 runs past its message"))?;
                Val::Fixed64
            }
            2 => {
                let len = read_varint(data, &mut pos).ok_or_else(|| corrupt("a malformed length"))?;
                let end = usize::try_from(len).ok().and_then(|len| pos.checked_add(len)).filter(|&end| end <= data.len());
                let end = end.ok_or_else(|| corrupt(format!("field {number} at byte {} runs past the end of its message", base + pos as u64)))?;
                let value = Val::Bytes(&data[pos..end], base + pos as u64);
                pos = end;
                value
            }
            5 => {
                let bytes = data.get(pos..pos + 4).ok_or_else(|| corrupt("a fixed32 runs past its message"))?;
                pos += 4;
                Val::Fixed32(u32::from_le_bytes(bytes.try_into().unwrap()))
            }
            other => return Err(corrupt(format!("unsupported wire type {other} in field {number}"))),
        };
        out.push((number, value));
    }
    Ok(out)
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The first string field `number` of a message.
fn string_field(fields: &[(u32, Val)], number: u32) -> String {
    fields.iter().find_map(|(n, v)| match v {
        Val::Bytes(b, _) if *n == number => Some(text(b)),
        _ => None,
    }).unwrap_or_default()
}

fn varint_field(fields: &[(u32, Val)], number: u32) -> Option<u64> {
    fields.iter().find_map(|(n, v)| match v {
        Val::Varint(x) if *n == number => Some(*x),
        _ => None,
    })
}

/// Every value of a repeated varint field, packed or not.
fn varints(fields: &[(u32, Val)], number: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for (_, v) in fields.iter().filter(|(n, _)| *n == number) {
        match v {
            Val::Varint(x) => out.push(*x),
            Val::Bytes(b, _) => {
                let mut pos = 0;
                while let Some(x) = read_varint(b, &mut pos) {
                    out.push(x);
                }
            }
            _ => {}
        }
    }
    out
}

/// Every value of a repeated float field, packed or not.
fn floats(fields: &[(u32, Val)], number: u32) -> Vec<f32> {
    let mut out = Vec::new();
    for (_, v) in fields.iter().filter(|(n, _)| *n == number) {
        match v {
            Val::Fixed32(x) => out.push(f32::from_bits(*x)),
            Val::Bytes(b, _) => out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))),
            _ => {}
        }
    }
    out
}

/// The sub-messages of field `number`.
fn messages<'a>(fields: &[(u32, Val<'a>)], number: u32) -> Vec<(&'a [u8], u64)> {
    fields.iter().filter_map(|(n, v)| match v {
        Val::Bytes(b, at) if *n == number => Some((*b, *at)),
        _ => None,
    }).collect()
}

/// `NeuralNetworkLayer` oneof field numbers and names (NeuralNetwork.proto).
const LAYER_TYPES: &[(u32, &str)] = &[
    (100, "convolution"), (120, "pooling"), (130, "activation"), (140, "innerProduct"), (150, "embedding"),
    (160, "batchnorm"), (165, "mvn"), (170, "l2normalize"), (175, "softmax"), (180, "lrn"), (190, "crop"),
    (200, "padding"), (210, "upsample"), (211, "resizeBilinear"), (212, "cropResize"), (220, "unary"),
    (230, "add"), (231, "multiply"), (240, "average"), (245, "scale"), (250, "bias"), (260, "max"),
    (261, "min"), (270, "dot"), (280, "reduce"), (290, "loadConstant"), (300, "reshape"), (301, "flatten"),
    (310, "permute"), (320, "concat"), (330, "split"), (340, "sequenceRepeat"), (345, "reorganizeData"),
    (350, "slice"), (400, "simpleRecurrent"), (410, "gru"), (420, "uniDirectionalLSTM"),
    (430, "biDirectionalLSTM"), (500, "custom"), (600, "copy"), (605, "branch"), (615, "loop"),
    (620, "loopBreak"), (625, "loopContinue"), (635, "rangeStatic"), (640, "rangeDynamic"), (660, "clip"),
    (665, "ceil"), (670, "floor"), (680, "sign"), (685, "round"), (700, "exp2"), (710, "sin"), (715, "cos"),
    (720, "tan"), (730, "asin"), (735, "acos"), (740, "atan"), (750, "sinh"), (755, "cosh"), (760, "tanh"),
    (770, "asinh"), (775, "acosh"), (780, "atanh"), (790, "erf"), (795, "gelu"), (815, "equal"),
    (820, "notEqual"), (825, "lessThan"), (827, "lessEqual"), (830, "greaterThan"), (832, "greaterEqual"),
    (840, "logicalOr"), (845, "logicalXor"), (850, "logicalNot"), (855, "logicalAnd"),
    (865, "modBroadcastable"), (870, "minBroadcastable"), (875, "maxBroadcastable"),
    (880, "addBroadcastable"), (885, "powBroadcastable"), (890, "divideBroadcastable"),
    (895, "floorDivBroadcastable"), (900, "multiplyBroadcastable"), (905, "subtractBroadcastable"),
    (920, "tile"), (925, "stack"), (930, "gather"), (935, "scatter"), (940, "gatherND"), (945, "scatterND"),
    (950, "softmaxND"), (952, "gatherAlongAxis"), (954, "scatterAlongAxis"), (960, "reverse"),
    (965, "reverseSeq"), (975, "splitND"), (980, "concatND"), (985, "transpose"), (995, "sliceStatic"),
    (1000, "sliceDynamic"), (1005, "slidingWindows"), (1015, "topK"), (1020, "argMin"), (1025, "argMax"),
    (1040, "embeddingND"), (1045, "batchedMatmul"), (1065, "getShape"), (1070, "loadConstantND"),
    (1080, "fillLike"), (1085, "fillStatic"), (1090, "fillDynamic"), (1100, "broadcastToLike"),
    (1105, "broadcastToStatic"), (1110, "broadcastToDynamic"), (1120, "squeeze"), (1125, "expandDims"),
    (1130, "flattenTo2D"), (1135, "reshapeLike"), (1140, "reshapeStatic"), (1145, "reshapeDynamic"),
    (1150, "rankPreservingReshape"), (1155, "constantPad"), (1170, "randomNormalLike"),
    (1175, "randomNormalStatic"), (1180, "randomNormalDynamic"), (1190, "randomUniformLike"),
    (1195, "randomUniformStatic"), (1200, "randomUniformDynamic"), (1210, "randomBernoulliLike"),
    (1215, "randomBernoulliStatic"), (1220, "randomBernoulliDynamic"), (1230, "categoricalDistribution"),
    (1250, "reduceL1"), (1255, "reduceL2"), (1260, "reduceMax"), (1265, "reduceMin"), (1270, "reduceSum"),
    (1275, "reduceProd"), (1280, "reduceMean"), (1285, "reduceLogSum"), (1290, "reduceSumSquare"),
    (1295, "reduceLogSumExp"), (1313, "whereNonZero"), (1315, "matrixBandPart"), (1320, "lowerTriangular"),
    (1325, "upperTriangular"), (1330, "whereBroadcastable"), (1350, "layerNormalization"),
    (1400, "NonMaximumSuppression"), (1450, "oneHot"), (1455, "cumSum"), (1460, "clampedReLU"),
    (1461, "argSort"), (1465, "pooling3d"), (1466, "globalPooling3d"), (1470, "sliceBySize"),
    (1471, "convolution3d"),
];

/// The `WeightParams` fields of the layer types that hold weights: (layer field, [(field, name)]).
const WEIGHT_FIELDS: &[(u32, &[(u32, &str)])] = &[
    (100, &[(90, "weights"), (91, "bias")]),
    (140, &[(20, "weights"), (21, "bias")]),
    (150, &[(20, "weights"), (21, "bias")]),
    (160, &[(15, "gamma"), (16, "beta"), (17, "mean"), (18, "variance")]),
    (245, &[(2, "scale"), (5, "bias")]),
    (250, &[(2, "bias")]),
    (290, &[(2, "data")]),
    (400, &[(30, "weightMatrix"), (31, "recursionMatrix"), (32, "biasVector")]),
    (
        410,
        &[
            (30, "updateGateWeightMatrix"),
            (31, "resetGateWeightMatrix"),
            (32, "outputGateWeightMatrix"),
            (50, "updateGateRecursionMatrix"),
            (51, "resetGateRecursionMatrix"),
            (52, "outputGateRecursionMatrix"),
            (70, "updateGateBiasVector"),
            (71, "resetGateBiasVector"),
            (72, "outputGateBiasVector"),
        ],
    ),
    (500, &[(20, "weights")]),
    (1040, &[(20, "weights"), (21, "bias")]),
    (1045, &[(8, "weights"), (9, "bias")]),
    (1070, &[(2, "data")]),
    (1350, &[(3, "gamma"), (4, "beta")]),
    (1471, &[(60, "weights"), (61, "bias")]),
];

/// The shape a weight has by its layer's parameters (`None`: unknown, shown flat).
fn weight_shape(layer: u32, params: &[(u32, Val)], weight: &str) -> Option<Vec<u64>> {
    let v = |n| varint_field(params, n).unwrap_or(0);
    Some(match (layer, weight) {
        (100, "weights") => [v(1), v(2)].into_iter().chain(varints(params, 20)).collect(),
        (100, "bias") => vec![v(1)],
        (140 | 150, "bias") => vec![v(2)],
        (140, "weights") | (150, "weights") => vec![v(2), v(1)],
        (160, _) => vec![v(1)],
        (1040, "weights") => vec![v(2), v(1)],
        (1040, "bias") => vec![v(2)],
        (1045, "weights") => vec![v(5), v(6)],
        (1045, "bias") => vec![v(6)],
        (290 | 1070, "data") | (250, "bias") => varints(params, 1),
        (245, "scale") => varints(params, 1),
        (245, "bias") => varints(params, 4),
        _ => return None,
    })
}

/// What a reader of a model is building.
struct Reader {
    model: Model,
    items: usize,
}

impl Reader {
    fn count(&mut self) -> Result<(), OpenError> {
        self.items += 1;
        if self.items > MAX_ITEMS { Err(corrupt(format!("more than {MAX_ITEMS} layers and weights"))) } else { Ok(()) }
    }

    fn skip(&mut self, name: &str, reason: impl Into<String>) {
        self.model.skipped.push(SkippedTensor::new(TensorId::Name(name.to_string()), reason));
    }
}

/// A `.mlmodel` file; `dir` is where an ML Program's `weights/` lie.
pub fn read(blob: &Blob, dir: Option<&Dir>) -> Result<Model, OpenError> {
    if blob.len() > MAX_MODEL {
        return Err(corrupt(format!("the model is over {MAX_MODEL} bytes")));
    }
    let data = blob.read_vec(0, blob.len()).map_err(|e| OpenError::unreadable(e.to_string()))?;
    let mut reader = Reader { model: Model::default(), items: 0 };
    let top = fields(&data, 0)?;
    let info = model_info(&top)?;
    let graph = read_model(&mut reader, &top, blob, dir, "", 0)?;
    reader.model.info = info;
    reader.model.add_json(vec!["graph.json".into()], &graph);
    Ok(reader.model)
}

/// `info.json`'s fields of a `Model`: its version, type, inputs, outputs and metadata.
fn model_info(top: &[(u32, Val)]) -> Result<Map<String, Value>, OpenError> {
    let mut info = Map::new();
    info.insert("specificationVersion".into(), json!(varint_field(top, 1).unwrap_or(0)));
    let kind = top.iter().find(|(n, _)| *n >= 200).map(|(n, _)| *n);
    info.insert("type".into(), json!(kind.map_or("none".to_string(), model_type_name)));
    info.insert("isUpdatable".into(), json!(varint_field(top, 10).unwrap_or(0) != 0));
    if let Some((description, at)) = messages(top, 2).into_iter().next() {
        let description = fields(description, at)?;
        let names = |number| -> Result<Vec<String>, OpenError> {
            messages(&description, number).into_iter().map(|(m, at)| Ok(string_field(&fields(m, at)?, 1))).collect()
        };
        info.insert("inputs".into(), json!(names(1)?));
        info.insert("outputs".into(), json!(names(10)?));
        if let Some((metadata, at)) = messages(&description, 100).into_iter().next() {
            let metadata = fields(metadata, at)?;
            let mut user = Map::new();
            for (entry, at) in messages(&metadata, 100) {
                let entry = fields(entry, at)?;
                user.insert(string_field(&entry, 1), json!(string_field(&entry, 2)));
            }
            info.insert("metadata".into(), json!({
                "author": string_field(&metadata, 3), "shortDescription": string_field(&metadata, 1),
                "versionString": string_field(&metadata, 2), "license": string_field(&metadata, 4), "userDefined": user,
            }));
        }
    }
    Ok(info)
}

fn model_type_name(number: u32) -> String {
    match number {
        PIPELINE_CLASSIFIER => "pipelineClassifier",
        PIPELINE_REGRESSOR => "pipelineRegressor",
        PIPELINE => "pipeline",
        NEURAL_NETWORK_REGRESSOR => "neuralNetworkRegressor",
        NEURAL_NETWORK_CLASSIFIER => "neuralNetworkClassifier",
        NEURAL_NETWORK => "neuralNetwork",
        ML_PROGRAM => "mlProgram",
        other => return format!("model type {other}"),
    }
    .to_string()
}

/// The weights of one `Model` (a pipeline's sub-models below `prefix`); returns its `graph.json`.
fn read_model(reader: &mut Reader, top: &[(u32, Val)], blob: &Blob, dir: Option<&Dir>, prefix: &str, depth: usize) -> Result<Value, OpenError> {
    if depth > MAX_DEPTH {
        return Err(corrupt("pipelines nest too deep"));
    }
    let Some((kind, body)) = top.iter().find_map(|(n, v)| match v {
        Val::Bytes(b, at) if *n >= 200 => Some((*n, (*b, *at))),
        _ => None,
    }) else {
        return Ok(json!({"type": "none"}));
    };
    let fields_of_body = fields(body.0, body.1)?;
    match kind {
        NEURAL_NETWORK | NEURAL_NETWORK_CLASSIFIER | NEURAL_NETWORK_REGRESSOR => {
            let mut layers = Vec::new();
            for (layer, at) in messages(&fields_of_body, 1) {
                layers.push(read_layer(reader, &fields(layer, at)?, blob, prefix)?);
            }
            Ok(json!({"type": model_type_name(kind), "layers": layers}))
        }
        PIPELINE | PIPELINE_CLASSIFIER | PIPELINE_REGRESSOR => {
            let pipeline = if kind == PIPELINE {
                fields_of_body
            } else {
                let (m, at) = messages(&fields_of_body, 1).into_iter().next().unwrap_or((&[], body.1));
                fields(m, at)?
            };
            let names: Vec<String> = messages(&pipeline, 2).into_iter().map(|(b, _)| text(b)).collect();
            let mut models = Vec::new();
            for (i, (sub, at)) in messages(&pipeline, 1).into_iter().enumerate() {
                let name = names.get(i).filter(|n| !n.is_empty()).cloned().unwrap_or_else(|| i.to_string());
                let sub_prefix = format!("{prefix}{name}/");
                let graph = read_model(reader, &fields(sub, at)?, blob, dir, &sub_prefix, depth + 1)?;
                models.push(json!({"name": name, "model": graph}));
            }
            Ok(json!({"type": model_type_name(kind), "models": models}))
        }
        ML_PROGRAM => read_program(reader, &fields_of_body, dir, prefix),
        other => Ok(json!({"type": model_type_name(other)})),
    }
}

/// One `NeuralNetworkLayer`: its weights join the model; returns its `graph.json` entry.
fn read_layer(reader: &mut Reader, layer: &[(u32, Val)], blob: &Blob, prefix: &str) -> Result<Value, OpenError> {
    reader.count()?;
    let name = string_field(layer, 1);
    let strings = |number| messages(layer, number).into_iter().map(|(b, _)| text(b)).collect::<Vec<_>>();
    let params = layer.iter().find_map(|(n, v)| match v {
        Val::Bytes(b, at) if *n >= 100 => Some((*n, *b, *at)),
        _ => None,
    });
    let kind = params.map_or(0, |p| p.0);
    let type_name = LAYER_TYPES.iter().find(|(n, _)| *n == kind).map_or_else(|| format!("layer type {kind}"), |(_, t)| t.to_string());
    let mut weights = Vec::new();
    if let (Some((_, body, at)), Some((_, fields_of))) = (params, WEIGHT_FIELDS.iter().find(|(n, _)| *n == kind)) {
        let params = fields(body, at)?;
        for &(number, field) in fields_of.iter() {
            for (wp, at) in messages(&params, number) {
                reader.count()?;
                let tensor_name = format!("{prefix}{name}/{field}");
                match weight(&fields(wp, at)?, blob, &tensor_name, weight_shape(kind, &params, field)) {
                    Ok(Some((tensor, quantization))) => {
                        let mut entry = json!({"name": field, "dtype": tensor.dtype.name(), "shape": tensor.shape});
                        if let Some(q) = quantization {
                            entry["quantization"] = q;
                        }
                        weights.push(entry);
                        reader.model.tensors.push(tensor);
                    }
                    Ok(None) => {}
                    Err(reason) => reader.skip(&tensor_name, reason),
                }
            }
        }
    }
    Ok(json!({"name": name, "type": type_name, "inputs": strings(2), "outputs": strings(3), "weights": weights}))
}

/// A `WeightParams` as a tensor (with its quantization parameters for `graph.json`), `None`
/// if it holds no values, or why it is left out. `shape` is what its layer says, checked
/// against the values' count (a weight whose layer says nothing usable is shown flat).
fn weight(wp: &[(u32, Val)], blob: &Blob, name: &str, shape: Option<Vec<u64>>) -> Result<Option<(Tensor, Option<Value>)>, String> {
    let shaped = |count: u64| match &shape {
        Some(s) if Tensor::element_count(s) == Some(count) => s.clone(),
        _ => vec![count],
    };
    let in_place = |at: u64, len: u64| -> Arc<dyn TensorBytes> { Arc::new(Extent { blob: blob.clone(), offset: at, len }) };
    // floatValue: one packed run is served in place; anything else is gathered.
    let float_runs: Vec<&Val> = wp.iter().filter(|(n, _)| *n == 1).map(|(_, v)| v).collect();
    if let [Val::Bytes(b, at)] = float_runs.as_slice() {
        if b.len() % 4 != 0 {
            return Err("its floatValue is not a whole number of floats".into());
        }
        let count = b.len() as u64 / 4;
        return Ok(Some((Tensor::named(name, DType::F32, shaped(count), in_place(*at, b.len() as u64)), None)));
    }
    if !float_runs.is_empty() {
        let values = floats(wp, 1);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        return Ok(Some((Tensor::named(name, DType::F32, shaped(values.len() as u64), Arc::new(InMemory(bytes.into()))), None)));
    }
    let bytes_field = |number| messages(wp, number).into_iter().next();
    if let Some((b, at)) = bytes_field(2) {
        if b.len() % 2 != 0 {
            return Err("its float16Value is not a whole number of halves".into());
        }
        return Ok(Some((Tensor::named(name, DType::F16, shaped(b.len() as u64 / 2), in_place(at, b.len() as u64)), None)));
    }
    if let Some((b, at)) = bytes_field(31) {
        return Ok(Some((Tensor::named(name, DType::I8, shaped(b.len() as u64), in_place(at, b.len() as u64)), None)));
    }
    let Some((raw, at)) = bytes_field(30) else { return Ok(None) };
    let raw_len = raw.len() as u64;
    let Some((q, q_at)) = bytes_field(40) else {
        return Ok(Some((Tensor::named(name, DType::U8, vec![raw_len], in_place(at, raw_len)), None)));
    };
    let q = fields(q, q_at).map_err(|e| e.to_string())?;
    let bits = varint_field(&q, 1).unwrap_or(0);
    let mut quantization = json!({"bits": bits});
    if let Some((linear, at)) = messages(&q, 101).into_iter().next() {
        let linear = fields(linear, at).map_err(|e| e.to_string())?;
        quantization["linear"] = json!({"scale": floats(&linear, 1), "bias": floats(&linear, 2)});
    }
    if let Some((lut, at)) = messages(&q, 102).into_iter().next() {
        quantization["lookupTable"] = json!(floats(&fields(lut, at).map_err(|e| e.to_string())?, 1));
    }
    let count = match &shape {
        Some(s) => Tensor::element_count(s).ok_or("its shape overflows")?,
        None if (1..=8).contains(&bits) => raw_len * 8 / bits,
        None => 0,
    };
    let tensor = match bits {
        8 if raw_len == count => Tensor::named(name, DType::U8, shaped(count), in_place(at, raw_len)),
        1..=7 => {
            let decoding = Decoding::Packed { bits: bits as u8, order: BitOrder::HighFirst, values: PackedValues::Unsigned };
            const NAMES: [&str; 7] = ["uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7"];
            widened::tensor(name, NAMES[bits as usize - 1], shaped(count), in_place(at, raw_len), decoding)
                .ok_or_else(|| format!("its {raw_len} bytes are not {count} {bits}-bit codes"))?
        }
        _ => return Err(format!("its {raw_len} bytes are not {count} {bits}-bit codes")),
    };
    Ok(Some((tensor, Some(quantization))))
}

/// The element type of a MIL `DataType` as stored in `weight.bin`.
enum BlobType {
    Plain(DType),
    Packed { name: &'static str, bits: u8, signed: bool },
}

fn blob_type(mil: u64) -> Option<BlobType> {
    let plain = |d| Some(BlobType::Plain(d));
    let packed = |name, bits, signed| Some(BlobType::Packed { name, bits, signed });
    match mil {
        1 => plain(DType::Bool),
        10 => plain(DType::F16),
        11 => plain(DType::F32),
        12 => plain(DType::F64),
        13 => plain(DType::BF16),
        21 => plain(DType::I8),
        22 => plain(DType::I16),
        23 => plain(DType::I32),
        24 => plain(DType::I64),
        31 => plain(DType::U8),
        32 => plain(DType::U16),
        33 => plain(DType::U32),
        34 => plain(DType::U64),
        40 => plain(DType::F8E4M3FN),
        41 => plain(DType::F8E5M2),
        25 => packed("int4", 4, true),
        35 => packed("uint4", 4, false),
        36 => packed("uint2", 2, false),
        37 => packed("uint1", 1, false),
        38 => packed("uint6", 6, false),
        39 => packed("uint3", 3, false),
        _ => None,
    }
}

/// The `weight.bin` files of a program, opened once each.
struct BlobFiles<'d> {
    dir: Option<&'d Dir>,
    open: HashMap<String, Result<Blob, String>>,
}

impl BlobFiles<'_> {
    /// The file a `BlobFileValue.fileName` names (`@model_path/weights/weight.bin`), with its
    /// storage header checked.
    fn get(&mut self, file_name: &str) -> Result<Blob, String> {
        let dir = self.dir;
        self.open
            .entry(file_name.to_string())
            .or_insert_with(|| {
                let rel = file_name.strip_prefix("@model_path/").ok_or_else(|| format!("blob file {file_name:?} is not below @model_path"))?;
                let dir = dir.ok_or("an ML Program's weights lie beside it (it cannot be read from standard input)")?;
                // The same words for a local and a remote package (their I/O errors differ).
                let blob = dir.open_below(rel).map_err(|_| format!("blob file {rel} is missing or unreadable"))?;
                let header = blob.read_vec(0, 8).map_err(|_| format!("blob file {rel} is shorter than its header"))?;
                let version = u32::from_le_bytes(header[4..8].try_into().unwrap());
                if version != 2 {
                    return Err(format!("blob file {rel} has storage version {version} (wfs reads 2)"));
                }
                Ok(blob)
            })
            .clone()
    }
}

/// An ML Program: every op attribute stored in a blob file is a tensor; returns `graph.json`.
fn read_program(reader: &mut Reader, program: &[(u32, Val)], dir: Option<&Dir>, prefix: &str) -> Result<Value, OpenError> {
    let mut files = BlobFiles { dir, open: HashMap::new() };
    let mut functions = Map::new();
    for (entry, at) in messages(program, 2) {
        let entry = fields(entry, at)?;
        let name = string_field(&entry, 1);
        let Some((function, at)) = messages(&entry, 2).into_iter().next() else { continue };
        let function = fields(function, at)?;
        let inputs: Vec<Value> = messages(&function, 1).into_iter().map(|(m, at)| named_type(&fields(m, at)?)).collect::<Result<_, OpenError>>()?;
        let mut blocks = Map::new();
        for (spec, at) in messages(&function, 3) {
            let spec = fields(spec, at)?;
            let Some((block, at)) = messages(&spec, 2).into_iter().next() else { continue };
            blocks.insert(string_field(&spec, 1), read_block(reader, &fields(block, at)?, &mut files, prefix, 0)?);
        }
        functions.insert(name, json!({"opset": string_field(&function, 2), "inputs": inputs, "blocks": blocks}));
    }
    Ok(json!({"type": "mlProgram", "version": varint_field(program, 1).unwrap_or(0), "functions": functions}))
}

/// A `NamedValueType` as `{"name", "dtype", "shape"}`.
fn named_type(named: &[(u32, Val)]) -> Result<Value, OpenError> {
    let (dtype, shape) = match messages(named, 2).into_iter().next() {
        Some((t, at)) => tensor_type(&fields(t, at)?)?,
        None => (0, None),
    };
    Ok(json!({"name": string_field(named, 1), "dtype": dtype, "shape": shape}))
}

/// A `ValueType`'s tensor data type and constant shape (`None` if any dimension is unknown).
fn tensor_type(value_type: &[(u32, Val)]) -> Result<(u64, Option<Vec<u64>>), OpenError> {
    let Some((t, at)) = messages(value_type, 1).into_iter().next() else { return Ok((0, None)) };
    let t = fields(t, at)?;
    let mut shape = Some(Vec::new());
    for (dim, at) in messages(&t, 3) {
        let dim = fields(dim, at)?;
        match messages(&dim, 1).into_iter().next() {
            Some((constant, at)) => {
                if let Some(s) = shape.as_mut() {
                    s.push(varint_field(&fields(constant, at)?, 1).unwrap_or(0));
                }
            }
            None => shape = None,
        }
    }
    Ok((varint_field(&t, 1).unwrap_or(0), shape))
}

/// A MIL `Block`: its ops' blob-file attributes join the model; returns its `graph.json`.
fn read_block(reader: &mut Reader, block: &[(u32, Val)], files: &mut BlobFiles, prefix: &str, depth: usize) -> Result<Value, OpenError> {
    if depth > MAX_DEPTH {
        return Err(corrupt("blocks nest too deep"));
    }
    let mut ops = Vec::new();
    for (op, at) in messages(block, 3) {
        reader.count()?;
        let op = fields(op, at)?;
        let kind = string_field(&op, 1);
        let outputs: Vec<Value> = messages(&op, 3).into_iter().map(|(m, at)| named_type(&fields(m, at)?)).collect::<Result<_, _>>()?;
        let output = outputs.first().and_then(|o| o["name"].as_str()).unwrap_or_default().to_string();
        // Values stored in a blob file: a const's is its output; an op's input bound to a value
        // (iOS 18 `constexpr_*` ops) or its attribute is named below its output.
        let mut stored = Vec::new();
        let mut inputs = Map::new();
        for (entry, at) in messages(&op, 2) {
            let entry = fields(entry, at)?;
            let input = string_field(&entry, 1);
            let mut names = Vec::new();
            if let Some((argument, at)) = messages(&entry, 2).into_iter().next() {
                for (binding, at) in messages(&fields(argument, at)?, 1) {
                    let binding = fields(binding, at)?;
                    match messages(&binding, 2).into_iter().next() {
                        Some((value, at)) => {
                            let name = format!("{prefix}{output}/{input}");
                            if stored_value(reader, files, &fields(value, at)?, &name)? {
                                stored.push(json!(input));
                            }
                            names.push(name);
                        }
                        None => names.push(string_field(&binding, 1)),
                    }
                }
            }
            inputs.insert(input, json!(names));
        }
        for (entry, at) in messages(&op, 5) {
            let entry = fields(entry, at)?;
            let attribute = string_field(&entry, 1);
            let Some((value, at)) = messages(&entry, 2).into_iter().next() else { continue };
            let name = if kind == "const" { format!("{prefix}{output}") } else { format!("{prefix}{output}/{attribute}") };
            if stored_value(reader, files, &fields(value, at)?, &name)? {
                stored.push(json!(attribute));
            }
        }
        let mut entry = json!({"type": kind, "inputs": inputs, "outputs": outputs});
        if !stored.is_empty() {
            entry["stored"] = json!(stored);
        }
        let blocks: Vec<Value> = messages(&op, 4).into_iter().map(|(b, at)| read_block(reader, &fields(b, at)?, files, prefix, depth + 1)).collect::<Result<_, _>>()?;
        if !blocks.is_empty() {
            entry["blocks"] = json!(blocks);
        }
        ops.push(entry);
    }
    let outputs: Vec<String> = messages(block, 2).into_iter().map(|(b, _)| text(b)).collect();
    Ok(json!({"operations": ops, "outputs": outputs}))
}

/// A MIL `Value` stored in a blob file joins the model as tensor `name` (or is listed as
/// skipped); `false` for a value held inline.
fn stored_value(reader: &mut Reader, files: &mut BlobFiles, value: &[(u32, Val)], name: &str) -> Result<bool, OpenError> {
    let Some((blob_value, at)) = messages(value, 5).into_iter().next() else { return Ok(false) };
    let blob_value = fields(blob_value, at)?;
    let (dtype, shape) = match messages(value, 2).into_iter().next() {
        Some((t, at)) => tensor_type(&fields(t, at)?)?,
        None => (0, None),
    };
    let offset = varint_field(&blob_value, 2).unwrap_or(0);
    match blob_tensor(files, &string_field(&blob_value, 1), offset, name, dtype, shape) {
        Ok(tensor) => reader.model.tensors.push(tensor),
        Err(reason) => reader.skip(name, reason),
    }
    Ok(true)
}

/// A blob of `weight.bin` at `offset` (its metadata header) as a tensor, or why not.
fn blob_tensor(files: &mut BlobFiles, file_name: &str, offset: u64, name: &str, mil_type: u64, shape: Option<Vec<u64>>) -> Result<Tensor, String> {
    let blob = files.get(file_name)?;
    let shape = shape.ok_or("its shape is not constant")?;
    let stored = blob_type(mil_type).ok_or_else(|| format!("MIL data type {mil_type} is not read"))?;
    let meta = blob.read_vec(offset, 64).map_err(|_| format!("its blob header at {offset} lies past the end of the file"))?;
    let word = |at: usize| u64::from_le_bytes(meta[at..at + 8].try_into().unwrap());
    if u32::from_le_bytes(meta[0..4].try_into().unwrap()) != BLOB_SENTINEL {
        return Err(format!("no blob header at {offset} (sentinel mismatch)"));
    }
    let (size, data_at) = (word(8), word(16));
    if data_at.checked_add(size).is_none_or(|end| end > blob.len()) {
        return Err(format!("its {size} bytes at {data_at} lie past the end of the {}-byte blob file", blob.len()));
    }
    let elements = Tensor::element_count(&shape).ok_or("its shape overflows")?;
    let bytes: Arc<dyn TensorBytes> = Arc::new(Extent { blob, offset: data_at, len: size });
    match stored {
        BlobType::Plain(dtype) => {
            if Tensor::raw_size(dtype, &shape) != Some(size) {
                return Err(format!("its blob holds {size} bytes, not the size of its {elements} elements"));
            }
            Ok(Tensor::named(name, dtype, shape, bytes))
        }
        BlobType::Packed { name: stored_name, bits, signed } => {
            let values = if signed { PackedValues::Signed } else { PackedValues::Unsigned };
            let decoding = Decoding::Packed { bits, order: BitOrder::LowFirst, values };
            widened::tensor(name, stored_name, shape, bytes, decoding).ok_or_else(|| format!("its blob holds {size} bytes, not {elements} {bits}-bit codes"))
        }
    }
}

/// An `.mlpackage` directory: the root model its `Manifest.json` names, with the weights beside
/// it. `None` if the directory is not a package.
pub fn open_package(dir: &Dir) -> Result<Option<Model>, OpenError> {
    let Ok(manifest) = dir.open("Manifest.json") else { return Ok(None) };
    let bytes = manifest.read_vec(0, manifest.len().min(16 << 20)).map_err(|e| OpenError::unreadable(e.to_string()))?;
    let Ok(manifest) = serde_json::from_slice::<Value>(&bytes) else { return Ok(None) };
    let Some(root) = manifest["rootModelIdentifier"].as_str() else { return Ok(None) };
    let path = manifest["itemInfoEntries"][root]["path"].as_str().ok_or_else(|| corrupt(format!("Manifest.json names no path for its root model {root}")))?;
    let data = dir.sub("Data")?;
    let rel = format!("Data/{path}");
    let blob = data.open_below(path).map_err(|e| OpenError::unreadable(format!("the package's model {rel}: {e}")))?;
    let (model_dir, _) = path.rsplit_once('/').unwrap_or(("", path));
    let mut model_home = data;
    for part in model_dir.split('/').filter(|p| !p.is_empty()) {
        model_home = model_home.sub(part)?;
    }
    let mut model = read(&blob, Some(&model_home))?;
    model.info.insert("package_model".into(), json!(rel));
    Ok(Some(model))
}
