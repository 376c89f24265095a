//! Darknet `.weights` files with the `.cfg` beside them (docs/formats/darknet.md): a header
//! (major, minor, revision, then `seen` as u64 from version 0.2 on, u32 before), then float32
//! arrays layer by layer in the order darknet's `parser.c` reads them, with no separators. The
//! cfg gives each layer's type and sizes; channels are tracked through the layers as darknet
//! does, so that each array has its shape. Tensors are `<layer index>_<type>/<array>`, served
//! in place. Without a cfg the body is one flat tensor and info.json says why.

use super::le_cursor::LeCursor;
use crate::dtype::DType;
use crate::error::OpenError;
use crate::model::{Extent, Model, Tensor};
use crate::source::{Blob, Dir};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Largest `.cfg` read.
const MAX_CFG: u64 = 16 << 20;
/// Sections a cfg may hold (bounds a hostile file's work).
const MAX_SECTIONS: usize = 1 << 16;

struct Header {
    major: i32,
    minor: i32,
    revision: i32,
    seen: u64,
    /// Connected layers' weights are stored transposed (`major > 1000 || minor > 1000`).
    transpose: bool,
    len: u64,
}

fn header(blob: &Blob) -> Result<Header, OpenError> {
    let mut cur = LeCursor::new(blob, "darknet");
    let (major, minor, revision) = (cur.i32("major")?, cur.i32("minor")?, cur.i32("revision")?);
    let wide = major * 10 + minor >= 2 && major < 1000 && minor < 1000;
    let seen = if wide { cur.u64("seen")? } else { u64::from(cur.u32("seen")?) };
    Ok(Header { major, minor, revision, seen, transpose: major > 1000 || minor > 1000, len: cur.pos })
}

/// The (major, minor) of a header darknet writes: small non-negative version numbers.
fn plausible(head: &[u8]) -> Option<(i32, i32)> {
    let word = |i: usize| head.get(i * 4..i * 4 + 4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
    let (major, minor, revision) = (word(0)?, word(1)?, word(2)?);
    let version_ok = (0..=1).contains(&major) && (0..=20).contains(&minor) && (0..=1000).contains(&revision);
    version_ok.then_some((major, minor))
}

/// One cfg section: its type and `key=value` options in order.
struct Section {
    kind: String,
    options: Vec<(String, String)>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&str> {
        self.options.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn int(&self, key: &str, default: i64) -> Result<i64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| format!("[{}] {key}={v} is not a whole number", self.kind)),
        }
    }
}

fn parse_cfg(text: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    for (at, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(kind) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if sections.len() == MAX_SECTIONS {
                return Err(format!("more than {MAX_SECTIONS} sections"));
            }
            sections.push(Section { kind: kind.trim().to_string(), options: Vec::new() });
        } else if let (Some((key, value)), Some(section)) = (line.split_once('='), sections.last_mut()) {
            section.options.push((key.trim().to_string(), value.trim().to_string()));
        } else {
            return Err(format!("line {}: {line:?} is neither [section] nor key=value", at + 1));
        }
    }
    Ok(sections)
}

/// Whether `text` is a darknet cfg: its first section is `[net]` or `[network]`.
fn is_cfg(text: &[u8]) -> bool {
    let first = text.split(|&b| b == b'\n').map(|l| l.trim_ascii()).find(|l| !l.is_empty() && !l.starts_with(b"#") && !l.starts_with(b";"));
    matches!(first, Some(b"[net]" | b"[network]"))
}

/// The cfg beside the weights: `<stem>.cfg`, or the only `.cfg` of the directory.
fn cfg_beside(blob: &Blob, dir: Option<&Dir>) -> Option<(String, Vec<u8>)> {
    let dir = dir?;
    let name = blob.file_name()?;
    let stem = name.strip_suffix(".weights").unwrap_or(&name);
    let open = |cfg: &str| -> Option<Vec<u8>> {
        let file = dir.open(cfg).ok().filter(|f| f.len() <= MAX_CFG)?;
        file.read_vec(0, file.len()).ok().filter(|text| is_cfg(text))
    };
    let own = format!("{stem}.cfg");
    if let Some(text) = open(&own) {
        return Some((own, text));
    }
    let cfgs: Vec<String> = dir.list().ok()?.into_iter().map(|e| e.name).filter(|n| n.ends_with(".cfg")).collect();
    match &cfgs[..] {
        [only] => open(only).map(|text| (only.clone(), text)),
        _ => None,
    }
}

/// Whether the blob is darknet weights: a plausible header, and a cfg beside it or (read
/// alone) a body of whole float32 values after a version darknet writes.
pub fn sniff(head: &[u8], blob: &Blob, dir: Option<&Dir>) -> bool {
    let Some((major, minor)) = plausible(head) else { return false };
    if cfg_beside(blob, dir).is_some() {
        return true;
    }
    // Alone, only the versions darknet's writers put there (0.1.0, pjreddie's 0.2.0,
    // AlexeyAB's 0.2.5): small integers open many raw data files.
    let revision = head.get(8..12).map_or(-1, |b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
    let header_len = if major * 10 + minor >= 2 { 20 } else { 16 };
    matches!((major, minor, revision), (0, 1, 0) | (0, 2, 0) | (0, 2, 5)) && blob.len() > header_len && (blob.len() - header_len).is_multiple_of(4)
}

/// A layer's output: height, width, channels (darknet's `out_h`, `out_w`, `out_c`).
#[derive(Clone, Copy, Default)]
struct Shape {
    h: i64,
    w: i64,
    c: i64,
}

impl Shape {
    fn outputs(self) -> i64 {
        self.h * self.w * self.c
    }
}

/// One array to read: its name and shape.
type Arrays = Vec<(&'static str, Vec<i64>)>;

/// What a section reads from the file and what it outputs, from its input and the outputs of
/// the layers before it; `Ok(None)` arrays for a type whose weights wfs cannot place.
fn layer(section: &Section, input: Shape, before: &[Shape], index: usize, transpose: bool) -> Result<(Option<Arrays>, Shape), String> {
    let int = |key, default| section.int(key, default);
    let positive = |key, default| -> Result<i64, String> {
        let v = int(key, default)?;
        if v <= 0 || v > 1 << 24 { Err(format!("layer {index} [{}]: {key}={v}", section.kind)) } else { Ok(v) }
    };
    let batch_norm = int("batch_normalize", 0)? != 0;
    let norm_arrays = |n: i64| -> Arrays { ["scales", "rolling_mean", "rolling_variance"].into_iter().map(|a| (a, vec![n])).collect() };
    let refer = |value: &str| -> Result<Shape, String> {
        let i: i64 = value.trim().parse().map_err(|_| format!("layer {index}: layer reference {value:?}"))?;
        let at = if i < 0 { index as i64 + i } else { i };
        usize::try_from(at).ok().and_then(|at| before.get(at)).copied().ok_or_else(|| format!("layer {index} refers to layer {at}, which is not before it"))
    };
    Ok(match section.kind.as_str() {
        "convolutional" | "conv" | "deconvolutional" | "deconv" => {
            let (n, size, groups) = (positive("filters", 1)?, positive("size", 1)?, positive("groups", 1)?);
            let stride = positive("stride", 1)?;
            let (stride_x, stride_y) = (positive("stride_x", stride)?, positive("stride_y", stride)?);
            let dilation = positive("dilation", 1)?;
            let padding = if int("pad", 0)? != 0 { size / 2 } else { int("padding", 0)? };
            let span = (size - 1) * dilation + 1;
            let out = if section.kind.starts_with("deconv") {
                Shape { h: (input.h - 1) * stride_y + size - 2 * padding, w: (input.w - 1) * stride_x + size - 2 * padding, c: n }
            } else {
                Shape { h: (input.h + 2 * padding - span) / stride_y + 1, w: (input.w + 2 * padding - span) / stride_x + 1, c: n }
            };
            if input.c % groups != 0 {
                return Err(format!("layer {index}: {} input channels in {groups} groups", input.c));
            }
            let mut arrays = vec![("biases", vec![n])];
            if batch_norm {
                arrays.extend(norm_arrays(n));
            }
            let weights = if section.kind.starts_with("deconv") { vec![input.c, n / groups, size, size] } else { vec![n, input.c / groups, size, size] };
            arrays.push(("weights", weights));
            (Some(arrays), out)
        }
        "connected" | "conn" => {
            let outputs = positive("output", 1)?;
            let inputs = input.outputs();
            let weights = if transpose { vec![inputs, outputs] } else { vec![outputs, inputs] };
            let mut arrays = vec![("biases", vec![outputs]), ("weights", weights)];
            if batch_norm {
                arrays.extend(norm_arrays(outputs));
            }
            (Some(arrays), Shape { h: 1, w: 1, c: outputs })
        }
        "batchnorm" => (Some(norm_arrays(input.c)), input),
        "maxpool" | "max" => {
            let size = positive("size", 1)?;
            let stride = positive("stride", 1)?;
            let padding = int("padding", size - 1)?;
            let (stride_x, stride_y) = (positive("stride_x", stride)?, positive("stride_y", stride)?);
            (Some(Vec::new()), Shape { h: (input.h + padding - size) / stride_y + 1, w: (input.w + padding - size) / stride_x + 1, c: input.c })
        }
        "avgpool" | "avg" => (Some(Vec::new()), Shape { h: 1, w: 1, c: input.c }),
        "upsample" => {
            let stride = int("stride", 2)?;
            let out = if stride < 0 { Shape { h: input.h / -stride, w: input.w / -stride, c: input.c } } else { Shape { h: input.h * stride, w: input.w * stride, c: input.c } };
            (Some(Vec::new()), out)
        }
        "route" => {
            let refs = section.get("layers").ok_or_else(|| format!("layer {index}: route without layers"))?;
            let shapes: Vec<Shape> = refs.split(',').map(refer).collect::<Result<_, _>>()?;
            let groups = positive("groups", 1)?;
            let first = shapes[0];
            let c: i64 = shapes.iter().map(|s| s.c).sum();
            (Some(Vec::new()), Shape { h: first.h, w: first.w, c: c / groups })
        }
        "reorg" => {
            let stride = positive("stride", 1)?;
            let out = if int("reverse", 0)? != 0 {
                Shape { h: input.h * stride, w: input.w * stride, c: input.c / (stride * stride) }
            } else {
                Shape { h: input.h / stride, w: input.w / stride, c: input.c * stride * stride }
            };
            (Some(Vec::new()), out)
        }
        "shortcut" | "dropout" | "activation" | "softmax" | "soft" | "cost" | "yolo" | "region" | "detection" | "scale_channels" | "sam"
        | "gaussian_yolo" | "normalization" | "lrn" | "logistic" | "l2norm" => (Some(Vec::new()), input),
        _ => (None, input),
    })
}

pub fn read(blob: &Blob, dir: Option<&Dir>) -> Result<Model, OpenError> {
    read_with_cfg(blob, cfg_beside(blob, dir))
}

/// The weights with their cfg (its name and text), or without one.
pub(crate) fn read_with_cfg(blob: &Blob, cfg: Option<(String, Vec<u8>)>) -> Result<Model, OpenError> {
    let head = header(blob)?;
    let mut model = Model::default();
    let mut header_json = Map::new();
    header_json.insert("major".into(), json!(head.major));
    header_json.insert("minor".into(), json!(head.minor));
    header_json.insert("revision".into(), json!(head.revision));
    header_json.insert("seen".into(), json!(head.seen));
    model.info.insert("header".into(), Value::Object(header_json));
    let body = blob.len() - head.len;
    let Some((cfg_name, cfg)) = cfg else {
        if !body.is_multiple_of(4) {
            return Err(OpenError::corrupt(format!("darknet: the {body} bytes after the header are not whole float32 values")));
        }
        model.info.insert("note".into(), Value::from("no .cfg beside the weights: the layers are unknown, so the values are one flat tensor"));
        model.tensors.push(Tensor::named("weights", DType::F32, vec![body / 4], Arc::new(Extent { blob: blob.clone(), offset: head.len, len: body })));
        return Ok(model);
    };
    let text = String::from_utf8_lossy(&cfg);
    let sections = parse_cfg(&text).map_err(|why| OpenError::corrupt(format!("darknet: {cfg_name}: {why}")))?;
    let net = &sections[0];
    let cfg_error = |why: String| OpenError::corrupt(format!("darknet: {cfg_name}: {why}"));
    let mut input = Shape { h: net.int("height", 0).map_err(cfg_error)?, w: net.int("width", 0).map_err(cfg_error)?, c: net.int("channels", 0).map_err(cfg_error)? };
    let mut outputs = Vec::new();
    let mut pos = head.len;
    let mut unread = None;
    let mut ended = None;
    for (index, section) in sections[1..].iter().enumerate() {
        let (arrays, out) = layer(section, input, &outputs, index, head.transpose).map_err(cfg_error)?;
        let Some(arrays) = arrays else {
            unread = Some(format!("layer {index} [{}]: where its weights lie is not known; the file is read up to it", section.kind));
            break;
        };
        for (array, dims) in arrays {
            let name = format!("{index}_{}/{array}", section.kind);
            let shape: Vec<u64> = dims.iter().map(|&d| u64::try_from(d).map_err(|_| cfg_error(format!("{name} has shape {dims:?}")))).collect::<Result<_, _>>()?;
            let len = Tensor::raw_size(DType::F32, &shape).ok_or_else(|| cfg_error(format!("{name}: shape {shape:?} overflows")))?;
            // darknet stops reading at the end of the file: a partial file is a model cut short.
            if pos.checked_add(len).is_none_or(|end| end > blob.len()) {
                ended.get_or_insert(format!("the file ends in {name} at byte {pos}: darknet loads the layers before it"));
                break;
            }
            model.tensors.push(Tensor::named(&name, DType::F32, shape, Arc::new(Extent { blob: blob.clone(), offset: pos, len })));
            pos += len;
        }
        if ended.is_some() {
            break;
        }
        outputs.push(out);
        input = out;
    }
    if unread.is_none() && ended.is_none() && pos != blob.len() {
        return Err(OpenError::corrupt(format!("darknet: {} bytes follow the last layer of {cfg_name}", blob.len() - pos)));
    }
    let mut counts: Vec<(String, u64)> = Vec::new();
    for section in &sections[1..] {
        match counts.iter_mut().find(|(kind, _)| *kind == section.kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((section.kind.clone(), 1)),
        }
    }
    model.info.insert("cfg".into(), Value::from(cfg_name));
    model.info.insert("cfg_sections".into(), Value::Object(counts.into_iter().map(|(k, n)| (k, json!(n))).collect()));
    for (key, why) in [("unread", unread), ("truncated", ended)] {
        if let Some(why) = why {
            model.info.insert(key.into(), Value::from(why));
        }
    }
    model.add_file(vec!["model.cfg".into()], cfg);
    Ok(model)
}
