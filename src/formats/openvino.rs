//! OpenVINO IR (docs/formats/openvino.md): the `.xml` graph and the `.bin` beside it. Every
//! `Const` layer is a tensor under `tensors/` by its layer name, its bytes served in place from
//! the `.bin` (`offset`, `size`); sub-byte types (u4, i4, nf4, u2, u1) show float32 values in
//! `.npy` (docs/tree.md 7.2). The layers and edges go to `graph.json`, the net's name, IR
//! version and `rt_info` to `info.json`.

use super::widened::{self, BitOrder, Decoding, PackedValues};
use crate::dtype::DType;
use crate::error::OpenError;
use crate::model::{Extent, Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use crate::source::{Blob, Dir};
use quick_xml::events::{BytesStart, Event};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Largest `.xml` read (the graph of a large model is tens of MB).
const MAX_XML: u64 = 1 << 30;
/// Most layers, ports and edges together.
const MAX_ITEMS: usize = 1 << 22;
/// Deepest element nesting followed in `rt_info`.
const MAX_RT_DEPTH: usize = 32;

/// `true` if the file is XML whose first element is `<net`.
pub fn sniff(blob: &Blob) -> bool {
    let Ok(head) = blob.read_vec(0, blob.len().min(4096)) else { return false };
    let text = String::from_utf8_lossy(&head);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if !text.starts_with('<') {
        return false;
    }
    // The first element that is not a declaration, comment or doctype.
    let mut rest = text;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        if !(rest.starts_with('?') || rest.starts_with('!')) {
            return rest.starts_with("net ") || rest.starts_with("net>") || rest.starts_with("net\n") || rest.starts_with("net\t");
        }
    }
    false
}

fn corrupt(why: impl std::fmt::Display) -> OpenError {
    OpenError::Corrupt(format!("OpenVINO IR is damaged: {why}"))
}

/// One `<layer>` as read.
#[derive(Default)]
struct Layer {
    id: String,
    name: String,
    kind: String,
    version: String,
    data: Map<String, Value>,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    /// Inside a sub-graph (a `TensorIterator` or `Loop` body): a tensor, not in `graph.json`.
    nested: bool,
}

#[derive(Default)]
struct Port {
    id: String,
    precision: Option<String>,
    names: Option<String>,
    shape: Vec<Value>,
}

impl Port {
    fn to_json(&self) -> Value {
        let mut port = Map::new();
        port.insert("id".into(), json!(self.id));
        if let Some(precision) = &self.precision {
            port.insert("precision".into(), json!(precision));
        }
        if let Some(names) = &self.names {
            port.insert("names".into(), json!(split_names(names)));
        }
        port.insert("shape".into(), Value::Array(self.shape.clone()));
        Value::Object(port)
    }
}

/// A port's `names`: comma-separated, `\,` escaping a comma inside a name.
fn split_names(names: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = names.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut().unwrap().extend(chars.next()),
            ',' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect()
}

fn attributes(e: &BytesStart) -> Result<Map<String, Value>, OpenError> {
    let mut map = Map::new();
    for attr in e.attributes() {
        let attr = attr.map_err(corrupt)?;
        let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        let value = attr.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(corrupt)?.into_owned();
        map.insert(key, Value::String(value));
    }
    Ok(map)
}

fn text_of(map: &Map<String, Value>, key: &str) -> String {
    map.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// The parsed `.xml`.
#[derive(Default)]
struct Net {
    name: String,
    version: String,
    layers: Vec<Layer>,
    edges: Vec<Value>,
    rt_info: Map<String, Value>,
    meta_data: Map<String, Value>,
}

fn parse(xml: &str) -> Result<Net, OpenError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut net = Net::default();
    // Names of the open elements, and the open objects of `rt_info` / `meta_data`.
    let mut stack: Vec<String> = Vec::new();
    let mut rt: Vec<(String, Map<String, Value>)> = Vec::new();
    let mut items = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| corrupt(format!("XML at byte {}: {e}", reader.error_position())))?;
        let (e, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                stack.pop();
                if let Some((key, object)) = rt.pop() {
                    match rt.last_mut() {
                        Some((_, parent)) => {
                            parent.insert(key, Value::Object(object));
                        }
                        None if key == "meta_data" => net.meta_data = object,
                        None => net.rt_info = object,
                    }
                }
                continue;
            }
            Event::Text(t) => {
                if stack.last().is_some_and(|s| s == "dim") {
                    let text = t.xml10_content().map_err(corrupt)?;
                    let text = text.trim();
                    let dim = text.parse::<u64>().map_or_else(|_| json!(text), |d| json!(d));
                    if let Some(port) = current_port(&mut net, &stack) {
                        port.shape.push(dim);
                    }
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let parent = stack.last().map(String::as_str);
        let attrs = attributes(e)?;
        items += 1;
        if items > MAX_ITEMS {
            return Err(corrupt(format!("more than {MAX_ITEMS} elements")));
        }
        if !rt.is_empty() {
            // Inside `rt_info`: `<key value="v"/>` (or `<attribute name="key" value="v"/>`) is a
            // string, an element with children an object.
            let key = attrs.get("name").and_then(Value::as_str).map_or(name.clone(), str::to_string);
            match attrs.get("value") {
                Some(value) => {
                    rt.last_mut().unwrap().1.insert(key, value.clone());
                    if !empty {
                        rt.push((String::new(), Map::new()));
                    }
                }
                None if rt.len() >= MAX_RT_DEPTH => return Err(corrupt("rt_info nests too deep")),
                None if !empty => rt.push((key, Map::new())),
                None => {
                    rt.last_mut().unwrap().1.insert(key, json!({}));
                }
            }
        } else {
            match (name.as_str(), parent) {
                ("net", None) => {
                    net.name = text_of(&attrs, "name");
                    net.version = text_of(&attrs, "version");
                }
                ("rt_info" | "meta_data", Some("net")) if !empty => rt.push((name.clone(), Map::new())),
                ("layer", Some("layers")) => net.layers.push(Layer {
                    id: text_of(&attrs, "id"),
                    name: text_of(&attrs, "name"),
                    kind: text_of(&attrs, "type"),
                    version: text_of(&attrs, "version"),
                    nested: stack.len() > 2,
                    ..Layer::default()
                }),
                ("data", Some("layer")) => {
                    if let Some(layer) = net.layers.last_mut() {
                        layer.data = attrs;
                    }
                }
                ("port", Some("input" | "output")) if stack.len() >= 2 && stack[stack.len() - 2] == "layer" => {
                    let port = Port {
                        id: text_of(&attrs, "id"),
                        precision: attrs.get("precision").and_then(Value::as_str).map(str::to_string),
                        names: attrs.get("names").and_then(Value::as_str).map(str::to_string),
                        shape: Vec::new(),
                    };
                    if let Some(layer) = net.layers.last_mut() {
                        if parent == Some("input") { layer.inputs.push(port) } else { layer.outputs.push(port) }
                    }
                }
                ("edge", Some("edges")) if stack.len() == 2 => net.edges.push(json!({
                    "from_layer": text_of(&attrs, "from-layer"),
                    "from_port": text_of(&attrs, "from-port"),
                    "to_layer": text_of(&attrs, "to-layer"),
                    "to_port": text_of(&attrs, "to-port"),
                })),
                _ => {}
            }
        }
        if !empty {
            stack.push(name);
        }
    }
    if !stack.is_empty() {
        return Err(corrupt("the XML ends inside an element"));
    }
    Ok(net)
}

/// The port a `<dim>` belongs to: the last one of the last layer.
fn current_port<'n>(net: &'n mut Net, stack: &[String]) -> Option<&'n mut Port> {
    let kind = stack.get(stack.len().checked_sub(3)?)?;
    let layer = net.layers.last_mut()?;
    match kind.as_str() {
        "input" => layer.inputs.last_mut(),
        "output" => layer.outputs.last_mut(),
        _ => None,
    }
}

/// How an element type is stored: a numpy-like dtype served as-is, or packed sub-byte codes.
enum Stored {
    Plain(DType),
    Packed { name: &'static str, decoding: Decoding },
}

/// The element types wfs reads (docs/formats/openvino.md#element-types).
fn stored_type(element_type: &str) -> Option<Stored> {
    let packed = |name, bits, order, values| Some(Stored::Packed { name, decoding: Decoding::Packed { bits, order, values } });
    let plain = |dtype| Some(Stored::Plain(dtype));
    match element_type {
        "f64" => plain(DType::F64),
        "f32" => plain(DType::F32),
        "f16" => plain(DType::F16),
        "bf16" => plain(DType::BF16),
        "i64" => plain(DType::I64),
        "i32" => plain(DType::I32),
        "i16" => plain(DType::I16),
        "i8" => plain(DType::I8),
        "u64" => plain(DType::U64),
        "u32" => plain(DType::U32),
        "u16" => plain(DType::U16),
        "u8" => plain(DType::U8),
        "boolean" => plain(DType::Bool),
        "f8e4m3" => plain(DType::F8E4M3FN),
        "f8e5m2" => plain(DType::F8E5M2),
        "f8e8m0" => plain(DType::F8E8M0FNU),
        "f4e2m1" => plain(DType::F4E2M1FN),
        "u4" => packed("uint4", 4, BitOrder::LowFirst, PackedValues::Unsigned),
        "i4" => packed("int4", 4, BitOrder::LowFirst, PackedValues::Signed),
        "nf4" => packed("nf4", 4, BitOrder::LowFirst, PackedValues::Nf4),
        "u2" => packed("uint2", 2, BitOrder::LowFirst, PackedValues::Unsigned),
        "u1" => packed("uint1", 1, BitOrder::HighFirst, PackedValues::Unsigned),
        _ => None,
    }
}

/// The `.bin` beside `model.xml`: `model.bin`.
fn bin_name(xml_name: &str) -> String {
    let stem = xml_name.rsplit_once('.').map_or(xml_name, |(stem, _)| stem);
    format!("{stem}.bin")
}

pub fn read(blob: &Blob, dir: Option<&Dir>) -> Result<Model, OpenError> {
    if blob.len() > MAX_XML {
        return Err(corrupt(format!("the XML is over {MAX_XML} bytes")));
    }
    let bytes = blob.read_vec(0, blob.len()).map_err(|e| OpenError::unreadable(e.to_string()))?;
    let xml = std::str::from_utf8(&bytes).map_err(|e| corrupt(format!("the XML is not UTF-8: {e}")))?;
    let net = parse(xml)?;
    let version: u32 = net.version.parse().map_err(|_| corrupt(format!("net version {:?} is not a number", net.version)))?;
    if version < 10 {
        return Err(OpenError::UnknownFormat(format!("OpenVINO IR version {version} is too old (wfs reads IR v10 and later)")));
    }

    let needs_bin = net.layers.iter().any(|l| l.kind == "Const" && text_of(&l.data, "size") != "0");
    let bin_file = blob.file_name().map(|n| bin_name(&n));
    let bin = match (&bin_file, dir) {
        (Some(name), Some(dir)) => match dir.open(name) {
            Ok(bin) => Some(bin),
            Err(_) if !needs_bin => None,
            // The .xml is readable but the model is not whole: damage, as for a cut file.
            Err(e) => return Err(corrupt(format!("its weights file {name} is not beside it: {e}"))),
        },
        _ if needs_bin => return Err(OpenError::unreadable("OpenVINO IR needs its .bin weights file beside it (it cannot be read from standard input)")),
        _ => None,
    };

    let mut model = Model::default();
    for layer in net.layers.iter().filter(|l| l.kind == "Const") {
        match const_tensor(layer, bin.as_ref()) {
            Ok(tensor) => model.tensors.push(tensor),
            Err(reason) => model.skipped.push(SkippedTensor::new(TensorId::Name(tensor_name(layer)), reason)),
        }
    }

    let top: Vec<&Layer> = net.layers.iter().filter(|l| !l.nested).collect();
    let types: BTreeSet<&str> = top.iter().map(|l| l.kind.as_str()).collect();
    let info = &mut model.info;
    info.insert("net_name".into(), json!(net.name));
    info.insert("ir_version".into(), json!(version));
    info.insert("layers".into(), json!(top.len()));
    info.insert("layer_types".into(), json!(types));
    if let Some(name) = bin_file.filter(|_| bin.is_some()) {
        info.insert("weights_file".into(), json!(name));
    }
    if !net.rt_info.is_empty() {
        info.insert("rt_info".into(), Value::Object(net.rt_info));
    }
    if !net.meta_data.is_empty() {
        info.insert("meta_data".into(), Value::Object(net.meta_data));
    }
    let layers: Vec<Value> = top
        .iter()
        .map(|l| {
            json!({
                "id": l.id, "name": l.name, "type": l.kind, "version": l.version,
                "data": l.data,
                "inputs": l.inputs.iter().map(Port::to_json).collect::<Vec<_>>(),
                "outputs": l.outputs.iter().map(Port::to_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    model.add_json(vec!["graph.json".into()], &json!({"name": net.name, "version": version, "layers": layers, "edges": net.edges}));
    Ok(model)
}

/// A Const's name: its layer's, else its output's first name, else its id.
fn tensor_name(layer: &Layer) -> String {
    if !layer.name.is_empty() {
        return layer.name.clone();
    }
    layer.outputs.iter().flat_map(|p| p.names.as_deref().map(split_names).unwrap_or_default()).next().unwrap_or_else(|| format!("const_{}", layer.id))
}

/// A Const layer as a tensor, or why it is left out.
fn const_tensor(layer: &Layer, bin: Option<&Blob>) -> Result<Tensor, String> {
    let name = tensor_name(layer);
    let element_type = text_of(&layer.data, "element_type");
    let stored = stored_type(&element_type).ok_or_else(|| format!("element type {element_type:?} is not read"))?;
    let shape_text = layer.data.get("shape").and_then(Value::as_str);
    let shape: Vec<u64> = match shape_text {
        Some(text) => text.split(',').map(str::trim).filter(|d| !d.is_empty()).map(|d| d.parse::<u64>()).collect::<Result<_, _>>().map_err(|_| format!("shape {text:?} is not a list of sizes"))?,
        // Old IR v10 files give the shape by the output port only.
        None => layer.outputs.first().map(|p| p.shape.iter().map(|d| d.as_u64().ok_or("a dynamic output shape")).collect::<Result<_, _>>()).transpose()?.unwrap_or_default(),
    };
    let number = |key: &str| text_of(&layer.data, key).parse::<u64>().map_err(|_| format!("{key} {:?} is not a byte count", text_of(&layer.data, key)));
    let (offset, size) = (number("offset")?, number("size")?);
    let elements = Tensor::element_count(&shape).ok_or("its shape overflows")?;
    let bits: u64 = match &stored {
        Stored::Plain(dtype) => {
            let (per, bytes) = dtype.block();
            bytes * 8 / per
        }
        Stored::Packed { decoding: Decoding::Packed { bits, .. }, .. } => u64::from(*bits),
        Stored::Packed { .. } => unreachable!("OpenVINO packs only integer codes"),
    };
    let expected = elements.checked_mul(bits).ok_or("its shape overflows")?.div_ceil(8);
    if size != expected {
        return Err(format!("size {size} is not the {expected} bytes of {elements} {element_type} elements"));
    }
    let bytes: Arc<dyn TensorBytes> = match bin {
        Some(bin) if offset.checked_add(size).is_some_and(|end| end <= bin.len()) => Arc::new(Extent { blob: bin.clone(), offset, len: size }),
        Some(bin) => return Err(format!("bytes {offset}..{offset}+{size} lie past the end of the {}-byte .bin", bin.len())),
        None => return Err("no .bin file".into()),
    };
    match stored {
        Stored::Plain(dtype) => {
            if Tensor::raw_size(dtype, &shape) != Some(size) {
                return Err(format!("{elements} {element_type} elements end inside a byte"));
            }
            Ok(Tensor::named(&name, dtype, shape, bytes))
        }
        Stored::Packed { name: stored_name, decoding } => widened::tensor(&name, stored_name, shape, bytes, decoding).ok_or_else(|| format!("{elements} {element_type} elements end inside a byte")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_split_on_unescaped_commas() {
        assert_eq!(split_names("a,b\\,c, d"), ["a", "b,c", "d"]);
    }

    #[test]
    fn sniff_needs_net_as_the_first_element() {
        let blob = |s: &str| Blob::Memory(Arc::new(s.as_bytes().to_vec()));
        assert!(sniff(&blob("<?xml version=\"1.0\"?>\n<!-- c -->\n<net name=\"m\" version=\"11\">")));
        assert!(!sniff(&blob("<?xml version=\"1.0\"?><network name=\"m\">")));
        assert!(!sniff(&blob("{\"net\": 1}")));
    }
}
