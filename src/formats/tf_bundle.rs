//! A TensorFlow tensor bundle (`.index` + `.data-*`, docs/formats/tensorflow.md#the-tensor-bundle) read into a model, as
//! checkpoints and SavedModels (its `variables/`) hold one: `variables/` for every bundle key
//! (docs/tree.md 6), and for TF2 object-based bundles the decoded object graph
//! (`object_graph.json`) and the Keras view `layers/`.

use super::bundle::{self, BundleEntryProto, BundleHeaderProto, TensorSliceProto};
use super::tiled::{Tile, Tiled};
use crate::dtype::DType;
use crate::error::{OpenError, ReadError};
use crate::model::{Extent, InMemory, Model, SkippedTensor, Tensor, TensorBytes, TensorId, path_of};
use crate::names::split_path;
use crate::source::Blob;
use prost::Message;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

const OBJECT_GRAPH_KEY: &str = "_CHECKPOINTABLE_OBJECT_GRAPH";
const VARIABLE_SUFFIX: &str = "/.ATTRIBUTES/VARIABLE_VALUE";
const DT_STRING: i32 = 7;
/// More data files than this is a damaged header, not a real checkpoint.
const MAX_SHARDS: i32 = 100_000;
/// String tensors are materialised at mount; bigger ones are skipped rather than loaded.
const MAX_STRING_TENSOR: u64 = 64 << 20;
/// Budget for all string tensors of one mount together.
pub(crate) const MAX_STRING_TOTAL: u64 = 256 << 20;

/// Reads the bundle that `files` opens into `model` below `under`, with its Keras view; returns
/// its info fields and the entries it left out. Checkpoints read it from files; fuzzing from
/// bytes in memory.
pub(crate) fn load_from(files: &mut BundleFiles, under: &[&str], model: &mut Model, budget: &mut u64) -> Result<Loaded, OpenError> {
    let bundle = load_bundle(files, under, model, budget)?;
    if let Some(graph) = &bundle.graph {
        add_keras_view(graph, &bundle.variables, under, model);
    }
    Ok((bundle.info, bundle.skipped))
}

/// Opens one file of a bundle by its suffix after the prefix (`.index`,
/// `.data-00000-of-00001`); the error is the file's name and why.
pub(crate) type BundleFiles<'a> = dyn FnMut(&str) -> Result<Blob, String> + 'a;

/// A bundle read into a model.
pub(super) struct Bundle {
    /// `info.json` fields.
    pub info: Map<String, Value>,
    /// The `variables/` tensor of each key.
    pub variables: HashMap<String, Tensor>,
    /// The TF2 object graph, if the bundle has one and it decodes.
    pub graph: Option<TrackableObjectGraph>,
    /// Entries wfs cannot show.
    pub skipped: Vec<SkippedTensor>,
}

/// A bundle's `info.json` fields and the entries it left out.
pub(crate) type Loaded = (Map<String, Value>, Vec<SkippedTensor>);

/// Reads a bundle into `model`: `variables/` below `under`, and `object_graph.json`; the Keras
/// view is left to the caller, which may know more (a SavedModel's Keras metadata).
pub(super) fn load_bundle(files: &mut BundleFiles, under: &[&str], model: &mut Model, budget: &mut u64) -> Result<Bundle, OpenError> {
    let index = files(".index").map_err(OpenError::unreadable)?;
    let entries = bundle::read_table(&index)?;
    let header = match entries.first() {
        Some((key, value)) if key.is_empty() => BundleHeaderProto::decode(value.as_slice())
            .map_err(|e| OpenError::corrupt(format!("bundle header is damaged: {e}")))?,
        _ => return Err(OpenError::corrupt("index file has no bundle header")),
    };
    if header.endianness != 0 {
        return Err(OpenError::corrupt("big-endian checkpoints are not supported"));
    }
    if !(1..=MAX_SHARDS).contains(&header.num_shards) {
        return Err(OpenError::corrupt(format!("bundle header claims {} data files", header.num_shards)));
    }
    let count = header.num_shards;
    let shards = (0..count)
        .map(|i| files(&format!(".data-{i:05}-of-{count:05}")).map_err(|why| OpenError::corrupt(format!("data file {why}"))))
        .collect::<Result<Vec<Blob>, OpenError>>()?;
    let by_key: HashMap<&[u8], &[u8]> = entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
    let reader = EntryReader { shards: &shards, by_key: &by_key };

    let mut skipped = Vec::new();
    let mut variables: HashMap<String, Tensor> = HashMap::new();
    let mut object_graph = None;
    // Key "" is the header; keys starting with 0 are slices, reached through their full entry.
    for (key, value) in entries.iter().filter(|(k, _)| k.first().is_some_and(|&b| b != 0)) {
        let name = String::from_utf8_lossy(key).into_owned();
        let entry = BundleEntryProto::decode(value.as_slice())
            .map_err(|e| OpenError::corrupt(format!("entry {name} is damaged: {e}")))?;
        let tensor = match reader.tensor(&name, &entry, budget)? {
            Ok(t) => t,
            Err(why) => {
                log::warn!("skipping {name}: {why}");
                skipped.push(SkippedTensor::new(TensorId::Key(name), why));
                continue;
            }
        };
        if name == OBJECT_GRAPH_KEY {
            object_graph = Some(tensor.bytes.clone());
        }
        let rel = split_path(name.strip_suffix(VARIABLE_SUFFIX).unwrap_or(&name));
        let tensor = Tensor { path: path_of(&[under, &["variables"]].concat(), &rel), ..tensor };
        model.tensors.push(tensor.clone());
        variables.insert(name, tensor);
    }

    let mut info = Map::new();
    let graph = object_graph.map(|bytes| read_object_graph(bytes.as_ref()));
    info.insert(
        "checkpoint_format".into(),
        json!(if graph.is_some() { "tf2-object-based" } else { "tf1-name-based" }),
    );
    info.insert("shards".into(), json!(header.num_shards));
    let graph = match graph {
        Some(Ok(graph)) => {
            model.add_json(path_of(under, &["object_graph.json".into()]), &graph.to_json());
            Some(graph)
        }
        Some(Err(why)) => {
            log::warn!("object graph not decoded: {why}");
            info.insert("object_graph_error".into(), json!(why));
            None
        }
        None => None,
    };
    Ok(Bundle { info, variables, graph, skipped })
}

/// Turns bundle entries into tensors, checking them against the data files.
struct EntryReader<'a> {
    shards: &'a [Blob],
    by_key: &'a HashMap<&'a [u8], &'a [u8]>,
}

/// A tensor wfs cannot show, with the reason (reported in `info.json`, not fatal).
type Skip = String;

impl EntryReader<'_> {
    /// The tensor (path = its key, to be placed by the caller). Damage fails the mount; a
    /// well-formed entry wfs does not handle is skipped.
    fn tensor(&self, name: &str, entry: &BundleEntryProto, budget: &mut u64) -> Result<Result<Tensor, Skip>, OpenError> {
        let shape = shape_of(name, entry)?;
        let dtype = if entry.dtype == DT_STRING {
            None
        } else {
            match DType::from_tf(entry.dtype) {
                Some(d) => Some(d),
                None => return Ok(Err(format!("unsupported dtype {}", entry.dtype))),
            }
        };
        let tensor = |dtype, bytes| Ok(Ok(Tensor::new(vec![name.to_string()], dtype, shape.clone(), bytes)));
        match dtype {
            None if !entry.slices.is_empty() => Ok(Err("partitioned string tensors are not supported".into())),
            Some(dtype) if !entry.slices.is_empty() => tensor(dtype, Arc::new(self.sliced(name, entry, dtype, &shape)?)),
            Some(dtype) => {
                if Tensor::raw_size(dtype, &shape) != Some(entry.size as u64) {
                    return Err(OpenError::corrupt(format!(
                        "entry {name}: size {} does not match shape {shape:?} of {}",
                        entry.size,
                        dtype.name()
                    )));
                }
                tensor(dtype, Arc::new(self.extent(name, entry)?))
            }
            None => {
                let count = Tensor::element_count(&shape).unwrap_or(u64::MAX);
                let size = entry.size as u64;
                if size > MAX_STRING_TENSOR || size > *budget {
                    return Ok(Err(format!("string tensor of {size} bytes is too large to load")));
                }
                let checked = self.extent(name, entry)?;
                let data = checked
                    .inner
                    .blob
                    .read_vec(checked.inner.offset, size)
                    .map_err(|e| OpenError::corrupt(format!("entry {name}: {e}")))?;
                let strings = match decode_strings(&data, count, checked.crc, MAX_STRING_TENSOR.min(*budget)) {
                    Ok(strings) => strings,
                    Err(StringsError::Damaged) => return Err(OpenError::corrupt(format!("string tensor {name} is damaged"))),
                    Err(StringsError::TooWide(padded)) => {
                        return Ok(Err(format!("string tensor takes {padded} bytes as fixed-width strings, too many to load")));
                    }
                };
                // What stays in memory is the fixed-width form, so that is what the budget pays.
                *budget -= strings.padded.len() as u64;
                let bytes: Arc<dyn TensorBytes> = if strings.intact {
                    Arc::new(InMemory(strings.padded.into()))
                } else {
                    Arc::new(Damaged { len: strings.padded.len() as u64 })
                };
                tensor(DType::Str(strings.width), bytes)
            }
        }
    }

    /// The entry's bytes in its data file, checked to lie inside it.
    fn extent(&self, name: &str, entry: &BundleEntryProto) -> Result<Checked, OpenError> {
        let shard = usize::try_from(entry.shard_id)
            .ok()
            .and_then(|i| self.shards.get(i))
            .ok_or_else(|| OpenError::corrupt(format!("entry {name} names data file {}", entry.shard_id)))?;
        let (offset, len) = (u64::try_from(entry.offset), u64::try_from(entry.size));
        match (offset, len) {
            (Ok(offset), Ok(len)) if offset.checked_add(len).is_some_and(|end| end <= shard.len()) => {
                Ok(Checked::new(Extent { blob: shard.clone(), offset, len }, entry.crc32c))
            }
            _ => Err(OpenError::corrupt(format!(
                "entry {name} lies outside its data file (offset {}, size {}, file {} bytes; truncated?)",
                entry.offset,
                entry.size,
                shard.len()
            ))),
        }
    }

    /// A partitioned tensor from its slice entries (docs/tree.md 6, docs/formats/tensorflow.md#partitioned-variables).
    fn sliced(&self, name: &str, entry: &BundleEntryProto, dtype: DType, shape: &[u64]) -> Result<Tiled<Checked>, OpenError> {
        let bad = |why: String| OpenError::corrupt(format!("partitioned tensor {name}: {why}"));
        let mut slices = Vec::with_capacity(entry.slices.len().min(4096));
        for slice in &entry.slices {
            let (start, len) = slice_bounds(slice, shape).ok_or_else(|| bad("slice outside the tensor".into()))?;
            let key = bundle::slice_key(name.as_bytes(), slice);
            let value = self.by_key.get(key.as_slice()).ok_or_else(|| bad(format!("slice {start:?}+{len:?} is missing")))?;
            let part = BundleEntryProto::decode(*value).map_err(|e| bad(format!("slice entry is damaged: {e}")))?;
            let expected = Tensor::raw_size(dtype, &len);
            if part.dtype != entry.dtype || !part.slices.is_empty() || expected != Some(part.size as u64) {
                return Err(bad(format!("slice {start:?}+{len:?} does not match its extent")));
            }
            slices.push(Tile { start, len, bytes: self.extent(name, &part)? });
        }
        // A whole read checks every slice's crc, which a piecewise copy cannot.
        Tiled::new(shape, dtype.size() as u64, slices, true).map_err(bad)
    }
}

fn shape_of(name: &str, entry: &BundleEntryProto) -> Result<Vec<u64>, OpenError> {
    let shape = entry.shape.clone().unwrap_or_default();
    let dims: Option<Vec<u64>> = shape.dim.iter().map(|d| u64::try_from(d.size).ok()).collect();
    match dims {
        Some(dims) if !shape.unknown_rank && Tensor::element_count(&dims).is_some() => Ok(dims),
        _ => Err(OpenError::corrupt(format!("entry {name} has an absurd or unknown shape"))),
    }
}

/// Start and length per dimension of a slice (a missing length is the whole dimension).
fn slice_bounds(slice: &TensorSliceProto, shape: &[u64]) -> Option<(Vec<u64>, Vec<u64>)> {
    if slice.extent.len() != shape.len() {
        return None;
    }
    slice
        .extent
        .iter()
        .zip(shape)
        .map(|(e, &dim)| {
            let start = u64::try_from(e.start).ok()?;
            let len = match e.length {
                Some(l) => u64::try_from(l).ok()?,
                None => dim.checked_sub(start)?,
            };
            (start.checked_add(len)? <= dim).then_some((start, len))
        })
        .collect::<Option<Vec<_>>>()
        .map(|bounds| bounds.into_iter().unzip())
}

/// A DT_STRING tensor (varint lengths, a masked crc of them, then the bytes) in numpy's
/// fixed-width `|S<n>` layout.
struct Strings {
    width: usize,
    padded: Vec<u8>,
    /// Whether both the lengths' crc and the entry's crc match.
    intact: bool,
}

#[derive(Debug, PartialEq)]
enum StringsError {
    /// The layout does not add up.
    Damaged,
    /// Fixed-width, the strings would take this many bytes, over the limit: one long string
    /// among many short ones multiplies out (a hostile 2 MB tensor could ask for terabytes).
    TooWide(u64),
}

/// Decodes a DT_STRING tensor whose fixed-width form takes at most `max_padded` bytes.
fn decode_strings(data: &[u8], count: u64, entry_crc: u32, max_padded: u64) -> Result<Strings, StringsError> {
    // Every length takes at least one byte, so a bigger count cannot fit.
    if count > data.len() as u64 {
        return Err(StringsError::Damaged);
    }
    // Each element takes at least one byte fixed-width.
    if count > max_padded {
        return Err(StringsError::TooWide(count));
    }
    let mut pos = 0;
    let lengths: Vec<usize> = (0..count)
        .map(|_| usize::try_from(super::wire::read_varint(data, &mut pos)?).ok())
        .collect::<Option<_>>()
        .ok_or(StringsError::Damaged)?;
    let stored_crc = pos.checked_add(4).and_then(|end| data.get(pos..end)).ok_or(StringsError::Damaged)?;
    pos += 4;
    let total = lengths.iter().try_fold(0usize, |acc, &l| acc.checked_add(l));
    if total.and_then(|t| pos.checked_add(t)) != Some(data.len()) {
        return Err(StringsError::Damaged);
    }
    // TF checksums the lengths as fixed-width integers (u32 unless one needs more), then
    // carries on over the stored checksum and the string bytes for the entry's crc.
    let lengths_crc = lengths.iter().fold(0u32, |crc, &l| match u32::try_from(l) {
        Ok(l32) => crc32c::crc32c_append(crc, &l32.to_le_bytes()),
        Err(_) => crc32c::crc32c_append(crc, &(l as u64).to_le_bytes()),
    });
    let full_crc = crc32c::crc32c_append(crc32c::crc32c_append(lengths_crc, stored_crc), &data[pos..]);
    let intact = stored_crc == bundle::mask(lengths_crc).to_le_bytes() && bundle::mask(full_crc) == entry_crc;
    // numpy gives empty strings width 1 (`|S1`), and a zero width would have no elements.
    let width = lengths.iter().copied().max().unwrap_or(0).max(1);
    let padded_len = (width as u64).saturating_mul(count);
    if padded_len > max_padded {
        return Err(StringsError::TooWide(padded_len));
    }
    let mut padded = vec![0u8; padded_len as usize];
    for (i, len) in lengths.into_iter().enumerate() {
        padded[i * width..i * width + len].copy_from_slice(&data[pos..pos + len]);
        pos += len;
    }
    Ok(Strings { width, padded, intact })
}

/// Tensors up to this size are checked whole on their first read, whatever its range: the
/// kernel splits reads into pieces of at most 1 MiB, so a read rarely covers a whole tensor.
const CHECK_ON_FIRST_READ: u64 = 64 << 20;

/// An entry's bytes in its data file, checked against its masked crc32c: on first touch for
/// tensors up to `CHECK_ON_FIRST_READ`, and on any read covering the whole tensor.
struct Checked {
    inner: Extent,
    crc: u32,
    /// Set once the whole tensor has been read and checked: whether it matched.
    verdict: std::sync::OnceLock<bool>,
}

impl Checked {
    fn new(inner: Extent, crc: u32) -> Self {
        Checked { inner, crc, verdict: std::sync::OnceLock::new() }
    }

    fn judge(&self, whole: &[u8]) -> Result<(), ReadError> {
        let ok = *self.verdict.get_or_init(|| bundle::masked_crc32c(whole) == self.crc);
        if ok { Ok(()) } else { Err(ReadError::Corrupt("tensor data fail their checksum".into())) }
    }
}

impl TensorBytes for Checked {
    fn len(&self) -> u64 {
        self.inner.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if let Some(&ok) = self.verdict.get() {
            if !ok {
                return self.judge(&[]);
            }
        } else if (offset != 0 || buf.len() as u64 != self.inner.len) && self.inner.len <= CHECK_ON_FIRST_READ {
            // The whole tensor was just read to check it: serve the range from it.
            let whole = self.inner.blob.read_vec(self.inner.offset, self.inner.len)?;
            self.judge(&whole)?;
            buf.copy_from_slice(&whole[offset as usize..offset as usize + buf.len()]);
            return Ok(());
        }
        self.inner.read_at(offset, buf)?;
        if offset == 0 && buf.len() as u64 == self.inner.len && self.verdict.get().is_none() {
            self.judge(buf)?;
        }
        Ok(())
    }
    fn location(&self) -> Option<crate::model::Location> {
        self.inner.location()
    }
}

/// A tensor whose stored bytes failed their checksum at mount: every read fails.
struct Damaged {
    len: u64,
}

impl TensorBytes for Damaged {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, _: u64, _: &mut [u8]) -> Result<(), ReadError> {
        Err(ReadError::Corrupt("tensor data fail their checksum".into()))
    }
}

/// `trackable_object_graph.proto` (docs/formats/tensorflow.md#checkpoint-key-naming), the fields wfs shows.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TrackableObjectGraph {
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<TrackableObject>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TrackableObject {
    #[prost(message, repeated, tag = "1")]
    pub children: Vec<ObjectReference>,
    #[prost(message, repeated, tag = "2")]
    pub attributes: Vec<SerializedTensor>,
    #[prost(message, repeated, tag = "3")]
    pub slot_variables: Vec<SlotVariableReference>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ObjectReference {
    #[prost(int32, tag = "1")]
    pub node_id: i32,
    #[prost(string, tag = "2")]
    pub local_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SerializedTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub full_name: String,
    #[prost(string, tag = "3")]
    pub checkpoint_key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SlotVariableReference {
    #[prost(int32, tag = "1")]
    original_variable_node_id: i32,
    #[prost(string, tag = "2")]
    slot_name: String,
    #[prost(int32, tag = "3")]
    slot_variable_node_id: i32,
}

impl TrackableObjectGraph {
    fn to_json(&self) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                json!({
                    "index": index,
                    "children": node.children.iter().map(|c| json!({"node_id": c.node_id, "local_name": c.local_name})).collect::<Vec<_>>(),
                    "attributes": node.attributes.iter().map(|a| json!({"name": a.name, "full_name": a.full_name, "checkpoint_key": a.checkpoint_key})).collect::<Vec<_>>(),
                    "slot_variables": node.slot_variables.iter().map(|s| json!({
                        "original_variable_node_id": s.original_variable_node_id,
                        "slot_name": s.slot_name,
                        "slot_variable_node_id": s.slot_variable_node_id,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "nodes": nodes })
    }
}

/// The object graph from the `_CHECKPOINTABLE_OBJECT_GRAPH` string scalar.
fn read_object_graph(bytes: &dyn TensorBytes) -> Result<TrackableObjectGraph, String> {
    let mut data = vec![0u8; bytes.len() as usize];
    bytes.read_at(0, &mut data).map_err(|e| e.to_string())?;
    // The scalar was padded to its own length, so there is nothing to strip.
    TrackableObjectGraph::decode(data.as_slice()).map_err(|e| e.to_string())
}

/// `layers/<layer>/<variable>` from each variable's `full_name` (docs/tree.md 5), sharing the bytes
/// of `variables/`, in the order a depth-first walk of the graph meets them (children in their
/// tracking order): Keras's `layer.weights` order, own variables before sublayers'. Optimizer
/// state stays under `variables/` only: slot keys, variables reached only through an optimizer
/// object, and names scoped by such a variable's first component (`Adam/m/dense/kernel`). Keys
/// alone cannot tell, since Keras 3 may key a layer weight `optimizer/_trainable_variables/2`
/// when the optimizer's path to it was found first.
pub(super) fn add_keras_view(graph: &TrackableObjectGraph, variables: &HashMap<String, Tensor>, under: &[&str], model: &mut Model) {
    let model_side = walk_avoiding_optimizers(graph);
    let mut on_model_side = vec![false; graph.nodes.len()];
    for &id in &model_side {
        on_model_side[id] = true;
    }
    let is_variable = |a: &&SerializedTensor| a.name == "VARIABLE_VALUE" && !a.checkpoint_key.contains("/.OPTIMIZER_SLOT/");
    let optimizer_scopes: Vec<&str> = graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !on_model_side[*i])
        .flat_map(|(_, n)| n.attributes.iter().filter(is_variable))
        .filter_map(|a| a.full_name.split_once('/').map(|(scope, _)| scope))
        .collect();
    // Keras 3 exports track every variable twice (`variables/N` and `_all_variables/N`), as
    // distinct nodes of one name: the first stands for both.
    let mut shown: HashMap<&str, (DType, &[u64])> = HashMap::new();
    for id in model_side {
        for attr in graph.nodes[id].attributes.iter().filter(is_variable) {
            let parts = split_path(&attr.full_name);
            if parts.len() < 2 || optimizer_scopes.contains(&parts[0].as_str()) {
                continue;
            }
            let Some(t) = variables.get(&attr.checkpoint_key) else { continue };
            if shown.get(attr.full_name.as_str()).is_some_and(|&(dtype, shape)| dtype == t.dtype && shape == t.shape) {
                continue;
            }
            shown.insert(&attr.full_name, (t.dtype, &t.shape));
            log::debug!("node {id}: {} is layers/{}", attr.checkpoint_key, attr.full_name);
            model.tensors.push(Tensor { path: path_of(&[under, &["layers"]].concat(), &parts), ..t.clone() });
        }
    }
}

/// The nodes the root reaches without passing through a child named like an optimizer, in
/// depth-first preorder (children in order), each once.
fn walk_avoiding_optimizers(graph: &TrackableObjectGraph) -> Vec<usize> {
    let mut seen = vec![false; graph.nodes.len()];
    let mut order = Vec::new();
    // An empty graph (a hostile or damaged checkpoint) has no root to start from.
    let mut stack = if seen.is_empty() { Vec::new() } else { vec![0usize] };
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut seen[id], true) {
            continue;
        }
        order.push(id);
        // Reversed onto the stack, so that the first child is walked first.
        for child in graph.nodes[id].children.iter().rev() {
            let optimizer = child.local_name.to_ascii_lowercase().contains("optimizer");
            match usize::try_from(child.node_id) {
                Ok(c) if c < seen.len() && !seen[c] && !optimizer => stack.push(c),
                _ => {}
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_become_fixed_width() {
        // docs/formats/tensorflow.md#data-files: ["hi", ""] and its entry crc.
        let data = [0x02, 0x00, 0x78, 0x27, 0x0b, 0x34, b'h', b'i'];
        let decode = |data: &[u8], count, crc| decode_strings(data, count, crc, MAX_STRING_TENSOR);
        let s = decode(&data, 2, 0xed48_9e9e).unwrap();
        assert_eq!((s.width, s.padded.as_slice(), s.intact), (2, b"hi\0\0".as_slice(), true));
        assert!(!decode(&data, 2, 0xed48_9e9f).unwrap().intact);
        let mut flipped = data;
        flipped[7] ^= 1;
        assert!(!decode(&flipped, 2, 0xed48_9e9e).unwrap().intact);
        let empty = decode(&[0x00, 1, 2, 3, 4], 1, 0).unwrap();
        assert_eq!((empty.width, empty.padded), (1, vec![0]));
        assert_eq!(decode(&[0x05, 1, 2, 3, 4, b'a'], 1, 0).err(), Some(StringsError::Damaged));
        assert_eq!(decode(&[0x02], 1_000_000_000_000, 0).err(), Some(StringsError::Damaged));
    }

    /// Regression: 100k empty strings and one of 100 kB once asked for 10 GB of padding.
    #[test]
    fn one_long_string_among_many_is_refused_not_allocated() {
        let count = 100_001u64;
        let mut data = vec![0u8; count as usize - 1];
        data.extend_from_slice(&[0xa0, 0x8d, 0x06]); // varint 100_000
        data.extend_from_slice(&[0; 4]);
        data.extend(std::iter::repeat_n(b'x', 100_000));
        assert_eq!(
            decode_strings(&data, count, 0, MAX_STRING_TENSOR).err(),
            Some(StringsError::TooWide(100_000 * count))
        );
    }

    /// Regression: an object graph with no nodes (an empty string scalar) indexed node 0.
    #[test]
    fn empty_object_graph_has_no_keras_view() {
        let mut model = Model::default();
        add_keras_view(&TrackableObjectGraph::default(), &HashMap::new(), &[], &mut model);
        assert!(model.tensors.is_empty());
    }

    #[test]
    fn absurd_shapes_are_refused() {
        let entry = |dims: &[i64]| BundleEntryProto {
            shape: Some(bundle::TensorShapeProto {
                dim: dims.iter().map(|&size| bundle::Dim { size }).collect(),
                unknown_rank: false,
            }),
            ..BundleEntryProto::default()
        };
        assert_eq!(shape_of("ok", &entry(&[3, 0])).unwrap(), [3, 0]);
        assert!(shape_of("unknown", &entry(&[-1, 3])).is_err());
        assert!(shape_of("huge", &entry(&[1 << 40, 1 << 40])).is_err());
    }
}
