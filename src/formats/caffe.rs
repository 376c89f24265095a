//! Caffe `.caffemodel` files (docs/formats/caffe.md): one protobuf `NetParameter`, walked in
//! place (the message is never built in memory). Each layer's blobs are tensors
//! `<layer name>/<index>`, shaped by their `BlobShape` or the legacy num/channels/height/width;
//! packed float and double data are served where they lie. Layers are the current `layer`
//! (field 100) and the legacy V1 `layers` (field 2, with the V0 layer inside it). The
//! `.prototxt` beside it, if any, is `model.prototxt`; the layers and their blobs `graph.json`.

use super::paged::Paged;
use super::wire::{Field, Walker, Wire};
use crate::dtype::DType;
use crate::error::OpenError;
use crate::model::{Extent, InMemory, Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use crate::source::{Blob, Dir};
use serde_json::{Value, json};
use std::sync::Arc;

/// Caffe's protobuf limit: no `.caffemodel` is larger.
const MAX_MESSAGE: u64 = 2 << 30;
/// Dimensions of a blob shape read (Caffe allows 32).
const MAX_DIMS: usize = 32;
/// Layers and blobs a net may hold (real nets have thousands): bounds what a hostile file of
/// empty layers makes the mount keep.
const MAX_ITEMS: usize = 1 << 20;
/// Largest `.prototxt` shown.
const MAX_PROTOTXT: u64 = 64 << 20;

fn corrupt(why: impl std::fmt::Display) -> OpenError {
    OpenError::corrupt(format!("caffe: {why}"))
}

/// `NetParameter` field numbers.
const NET_NAME: u32 = 1;
const NET_V1_LAYERS: u32 = 2;
const NET_LAYER: u32 = 100;

/// Whether the blob is a serialized `NetParameter`: its first top-level fields are well formed
/// `NetParameter` fields, and a layer comes before anything else unknown.
pub fn sniff(blob: &Blob) -> bool {
    let mut src = Paged::new(blob);
    let len = src.len();
    if len > MAX_MESSAGE {
        return false;
    }
    let mut walker = Walker::over(0, len);
    for _ in 0..64 {
        let Ok(Some(field)) = walker.next(&mut src) else { return false };
        let expected = match field.number() {
            NET_NAME | NET_V1_LAYERS | 3 | 6 | 8 | NET_LAYER => Wire::Bytes,
            5 | 7 => Wire::Varint,
            // input_dim: repeated int32, packed or not.
            4 => field.wire(),
            _ => return false,
        };
        if field.wire() != expected {
            return false;
        }
        if matches!(field.number(), NET_V1_LAYERS | NET_LAYER) {
            return looks_like_layer(&mut src, &field);
        }
    }
    false
}

/// Whether a layer field holds a name and a type where its message puts them (a string type
/// in `LayerParameter`, the enum in `V1LayerParameter`): other protobufs (a TensorFlow
/// GraphDef's function library is also a field 2) do not.
fn looks_like_layer(src: &mut Paged, field: &Field) -> bool {
    let (at, len) = field.span();
    let (name, kind) = if field.number() == NET_LAYER { ((1, Wire::Bytes), (2, Wire::Bytes)) } else { ((4, Wire::Bytes), (5, Wire::Varint)) };
    let (mut has_name, mut has_kind) = (false, false);
    let mut walker = Walker::over(at, len);
    while let Ok(Some(inner)) = walker.next(src) {
        has_name |= (inner.number(), inner.wire()) == name;
        has_kind |= (inner.number(), inner.wire()) == kind;
        if has_name && has_kind {
            return true;
        }
    }
    false
}

/// The V1 `LayerType` enum, as Caffe's upgrade names each type.
const V1_TYPES: &[&str] = &[
    "None", "Accuracy", "BNLL", "Concat", "Convolution", "Data", "Dropout", "EuclideanLoss", "Flatten", "HDF5Data", "HDF5Output", "Im2col",
    "ImageData", "InfogainLoss", "InnerProduct", "LRN", "MultinomialLogisticLoss", "Pooling", "ReLU", "Sigmoid", "Softmax", "SoftmaxWithLoss",
    "Split", "TanH", "WindowData", "Eltwise", "Power", "SigmoidCrossEntropyLoss", "HingeLoss", "MemoryData", "ArgMax", "Threshold", "DummyData",
    "Slice", "MVN", "AbsVal", "Silence", "ContrastiveLoss", "Exp", "Deconvolution",
];

/// A repeated scalar field as it lies in the message: packed runs and single values.
#[derive(Default)]
struct Values {
    /// Packed runs, (offset, bytes).
    runs: Vec<(u64, u64)>,
    /// Unpacked values, by their bytes.
    singles: Vec<u8>,
    /// Whether runs and singles alternate: then the order is the wire order, kept by gathering.
    mixed: bool,
}

impl Values {
    fn add(&mut self, field: &Field, size: u64) -> Result<(), String> {
        match *field {
            Field::Bytes { at, len, .. } if len % size == 0 => {
                self.mixed |= !self.singles.is_empty();
                self.runs.push((at, len));
            }
            Field::Bytes { number, .. } => return Err(format!("packed field {number} is not whole {size}-byte values")),
            Field::Fixed32(_, v) if size == 4 => {
                self.mixed |= !self.runs.is_empty();
                self.singles.extend(v.to_le_bytes());
            }
            Field::Fixed64(_, v) if size == 8 => {
                self.mixed |= !self.runs.is_empty();
                self.singles.extend(v.to_le_bytes());
            }
            _ => return Err(format!("field {} has the wrong wire type", field.number())),
        }
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum::<u64>() + self.singles.len() as u64
    }

    /// The values' bytes: in place for one packed run, gathered otherwise.
    fn tensor_bytes(&self, src: &mut Paged) -> Result<Arc<dyn TensorBytes>, OpenError> {
        if let ([(offset, len)], []) = (&self.runs[..], &self.singles[..]) {
            return Ok(Arc::new(Extent { blob: src.blob().clone(), offset: *offset, len: *len }));
        }
        if self.mixed {
            return Err(corrupt("a blob's data mixes packed and unpacked values"));
        }
        let mut all = Vec::with_capacity(self.bytes() as usize);
        for &(offset, len) in &self.runs {
            all.extend(src.blob().read_vec(offset, len).map_err(|e| OpenError::unreadable(e.to_string()))?);
        }
        all.extend(&self.singles);
        Ok(Arc::new(InMemory(all.into())))
    }
}

/// One `BlobProto`: its shape and data.
#[derive(Default)]
struct BlobRecord {
    legacy: [Option<u64>; 4],
    shape: Option<Vec<u64>>,
    data: Values,
    double_data: Values,
}

impl BlobRecord {
    fn shape(&self) -> Vec<u64> {
        match (&self.shape, self.legacy.iter().any(Option::is_some)) {
            (Some(dims), _) => dims.clone(),
            (None, true) => self.legacy.iter().map(|d| d.unwrap_or(0)).collect(),
            (None, false) => Vec::new(),
        }
    }
}

fn blob_record(src: &mut Paged, at: u64, len: u64) -> Result<BlobRecord, String> {
    let mut record = BlobRecord::default();
    let mut walker = Walker::over(at, len);
    while let Some(field) = walker.next(src)? {
        match field.number() {
            n @ 1..=4 if field.wire() == Wire::Varint => record.legacy[n as usize - 1] = Some(field.varint() as i32 as i64 as u64),
            5 => record.data.add(&field, 4)?,
            8 => record.double_data.add(&field, 8)?,
            7 if field.wire() == Wire::Bytes => {
                let (at, len) = field.span();
                let mut dims = Vec::new();
                let mut shape = Walker::over(at, len);
                while let Some(dim) = shape.next(src)? {
                    match dim {
                        Field::Varint(1, d) => dims.push(d),
                        Field::Bytes { number: 1, at, len } => {
                            let mut packed = Walker::over(at, len);
                            while packed.at < packed.end {
                                dims.push(packed.varint(src)?);
                            }
                        }
                        _ => {}
                    }
                    if dims.len() > MAX_DIMS {
                        return Err(format!("a blob shape has more than {MAX_DIMS} dimensions"));
                    }
                }
                // A negative int64 dimension reads as a huge u64: the size check refuses it.
                record.shape = Some(dims);
            }
            _ => {}
        }
    }
    Ok(record)
}

/// One layer: name, type and where its blobs lie.
struct Layer {
    name: String,
    kind: String,
    bottoms: Vec<String>,
    tops: Vec<String>,
    blobs: Vec<(u64, u64)>,
}

fn text(src: &mut Paged, field: &Field) -> Result<String, String> {
    let (at, len) = field.span();
    let bytes = src.read(at, len.min(1 << 16)).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A `LayerParameter` (`v1` false) or `V1LayerParameter` (`v1` true, with its V0 layer).
fn layer(src: &mut Paged, at: u64, len: u64, v1: bool) -> Result<Layer, String> {
    let (name_field, type_field, blobs_field) = if v1 { (4, 5, 6) } else { (1, 2, 7) };
    let mut layer = Layer { name: String::new(), kind: String::new(), bottoms: Vec::new(), tops: Vec::new(), blobs: Vec::new() };
    let mut walker = Walker::over(at, len);
    while let Some(field) = walker.next(src)? {
        let number = field.number();
        let bytes = field.wire() == Wire::Bytes;
        if number == name_field && bytes {
            layer.name = text(src, &field)?;
        } else if number == type_field && v1 && field.wire() == Wire::Varint {
            layer.kind = V1_TYPES.get(field.varint() as usize).map_or_else(|| format!("V1 type {}", field.varint()), |t| t.to_string());
        } else if number == type_field && bytes {
            layer.kind = text(src, &field)?;
        } else if number == blobs_field && bytes {
            if layer.blobs.len() == MAX_ITEMS {
                return Err(format!("more than {MAX_ITEMS} blobs"));
            }
            layer.blobs.push(field.span());
        } else if number == if v1 { 2 } else { 3 } && bytes {
            layer.bottoms.push(text(src, &field)?);
        } else if number == if v1 { 3 } else { 4 } && bytes {
            layer.tops.push(text(src, &field)?);
        } else if v1 && number == 1 && bytes {
            // The V0 layer: name 1, type 2 (a string), blobs 50.
            let (at, len) = field.span();
            let mut v0 = Walker::over(at, len);
            while let Some(inner) = v0.next(src)? {
                match (inner.number(), inner.wire()) {
                    (1, Wire::Bytes) if layer.name.is_empty() => layer.name = text(src, &inner)?,
                    (2, Wire::Bytes) if layer.kind.is_empty() => layer.kind = text(src, &inner)?,
                    (50, Wire::Bytes) if layer.blobs.len() < MAX_ITEMS => layer.blobs.push(inner.span()),
                    (50, Wire::Bytes) => return Err(format!("more than {MAX_ITEMS} blobs")),
                    _ => {}
                }
            }
        }
    }
    Ok(layer)
}

/// The `.prototxt` beside the model: `<stem>.prototxt`, or the only one in the directory.
fn prototxt_beside(blob: &Blob, dir: Option<&Dir>) -> Option<(String, Vec<u8>)> {
    let dir = dir?;
    let name = blob.file_name()?;
    let stem = name.strip_suffix(".caffemodel").unwrap_or(&name);
    let candidates: Vec<String> = dir.list().ok()?.into_iter().map(|e| e.name).filter(|n| n.ends_with(".prototxt")).collect();
    let chosen = candidates.iter().find(|n| n.strip_suffix(".prototxt") == Some(stem)).or(match &candidates[..] {
        [only] => Some(only),
        _ => None,
    })?;
    let file = dir.open(chosen).ok().filter(|f| f.len() <= MAX_PROTOTXT)?;
    Some((chosen.clone(), file.read_vec(0, file.len()).ok()?))
}

pub fn read(blob: &Blob, dir: Option<&Dir>) -> Result<Model, OpenError> {
    if blob.len() > MAX_MESSAGE {
        return Err(corrupt(format!("the file has {} bytes, more than a protobuf message can (2 GiB)", blob.len())));
    }
    let mut src = Paged::new(blob);
    let mut net_name = String::new();
    let mut layers = Vec::new();
    let mut walker = Walker::over(0, src.len());
    while let Some(field) = walker.next(&mut src).map_err(corrupt)? {
        match (field.number(), field.wire()) {
            (NET_NAME, Wire::Bytes) => net_name = text(&mut src, &field).map_err(corrupt)?,
            (NET_LAYER, Wire::Bytes) | (NET_V1_LAYERS, Wire::Bytes) => {
                if layers.len() == MAX_ITEMS {
                    return Err(corrupt(format!("more than {MAX_ITEMS} layers")));
                }
                let (at, len) = field.span();
                layers.push(layer(&mut src, at, len, field.number() == NET_V1_LAYERS).map_err(|why| corrupt(format!("layer {}: {why}", layers.len())))?);
            }
            _ => {}
        }
    }
    if layers.is_empty() {
        return Err(corrupt("the NetParameter has no layers"));
    }
    let mut model = Model::default();
    let mut graph = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        // Names are unique in a valid net; an unnamed or repeated one gets its index.
        let taken = layers[..index].iter().any(|l| l.name == layer.name);
        let label = if layer.name.is_empty() || taken { format!("{}#{index}", layer.name) } else { layer.name.clone() };
        let mut shapes = Vec::new();
        for (i, &(at, len)) in layer.blobs.iter().enumerate() {
            let name = format!("{label}/{i}");
            let record = blob_record(&mut src, at, len).map_err(|why| corrupt(format!("blob {name}: {why}")))?;
            let shape = record.shape();
            shapes.push(json!(shape));
            let (dtype, values) = if record.data.bytes() == 0 && record.double_data.bytes() > 0 { (DType::F64, &record.double_data) } else { (DType::F32, &record.data) };
            let expected = Tensor::raw_size(dtype, &shape);
            if expected != Some(values.bytes()) {
                let reason = format!("shape {shape:?} needs {} values, the blob holds {}", Tensor::element_count(&shape).map_or("too many".into(), |n| n.to_string()), values.bytes() / dtype.size() as u64);
                model.skipped.push(SkippedTensor::new(TensorId::Name(name), reason));
                continue;
            }
            let bytes = values.tensor_bytes(&mut src)?;
            model.tensors.push(Tensor::named(&name, dtype, shape, bytes));
        }
        graph.push(json!({"name": layer.name, "type": layer.kind, "bottoms": layer.bottoms, "tops": layer.tops, "blobs": shapes}));
    }
    let mut types: Vec<&str> = layers.iter().map(|l| l.kind.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    model.info.insert("name".into(), Value::from(net_name));
    model.info.insert("layers".into(), json!(layers.len()));
    model.info.insert("layer_types".into(), json!(types));
    if let Some((name, text)) = prototxt_beside(blob, dir) {
        model.info.insert("prototxt".into(), Value::from(name));
        model.add_file(vec!["model.prototxt".into()], text);
    }
    model.add_json(vec!["graph.json".into()], &json!({ "layers": graph }));
    Ok(model)
}
