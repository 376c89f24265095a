//! PyTorch distributed checkpoints (`torch.distributed.checkpoint`, docs/formats/pytorch.md#distributed-checkpoints):
//! a directory with a pickled `.metadata` and `__<rank>_<n>.distcp` files. `.metadata` is read
//! with the pickle VM (its classes are data, never imported); each tensor chunk is a
//! `torch.save` zip at an offset of a `.distcp` file, read in place, and a tensor's chunks are
//! tiled back into the whole tensor on read. Non-tensor state goes to `object.json`.

use crate::formats::archive::Archive;
use crate::formats::options::ReadOptions;
use crate::formats::tiled::{Shared, Tile, Tiled};
use crate::error::OpenError;
use crate::model::{Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use crate::pickle::{self, Limits, Node, Pickle, Value};
use crate::source::{Blob, Dir};
use serde_json::{Map, Value as Json, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The metadata file every distributed checkpoint has.
const METADATA: &str = ".metadata";
/// The class of its pickled root.
const METADATA_CLASS: &str = "torch.distributed.checkpoint.metadata.Metadata";

/// A directory whose `.metadata` is a distributed checkpoint's; `None` for any other directory.
pub fn open_dir(dir: &Dir, options: &ReadOptions) -> Result<Option<Model>, OpenError> {
    let Ok(metadata) = dir.open(METADATA) else { return Ok(None) };
    // A pickle starts with PROTO (protocol 2 and later) or an opcode of protocol 0/1.
    if metadata.read_vec(0, metadata.len().min(1)).ok().as_deref() != Some(b"\x80") {
        return Ok(None);
    }
    let (pickle, _) = pickle::load(&metadata, 0, Limits::default()).map_err(|e| OpenError::corrupt(format!("{METADATA}: {e}")))?;
    let is_dcp = pickle.object(&pickle.root).and_then(|o| pickle.class_name(o)).as_deref() == Some(METADATA_CLASS);
    if !is_dcp {
        return Ok(None);
    }
    let mut model = Checkpoint { pickle: &pickle, dir, options, files: HashMap::new() }.read()?;
    pickle::record_globals(&mut model.info, METADATA, &pickle);
    Ok(Some(model))
}

/// Where one chunk's `torch.save` zip lies: (file, offset, length).
type Stored = (String, u64, u64);

struct Checkpoint<'a> {
    pickle: &'a Pickle,
    dir: &'a Dir,
    options: &'a ReadOptions,
    /// The `.distcp` files opened so far, by name.
    files: HashMap<String, Blob>,
}

impl Checkpoint<'_> {
    fn read(mut self) -> Result<Model, OpenError> {
        let pickle = self.pickle;
        let bad = |why: &str| OpenError::corrupt(format!("{METADATA}: {why}"));
        let root = &pickle.root;
        let entries = field(pickle, root, "state_dict_metadata").and_then(|v| dict(pickle, v)).ok_or_else(|| bad("no state_dict_metadata"))?;
        let storage = field(pickle, root, "storage_data").and_then(|v| dict(pickle, v)).ok_or_else(|| bad("no storage_data"))?;
        // Each stored item by (fully qualified name, chunk offsets; none for bytes).
        let mut stored: HashMap<(String, Option<Vec<u64>>), Stored> = HashMap::new();
        for (index, info) in storage {
            let fqn = field(pickle, index, "fqn").and_then(|f| pickle.text(f)).ok_or_else(|| bad("a storage index without a name"))?;
            let offsets = field(pickle, index, "offset").filter(|v| !matches!(v, Value::None)).map(|v| dims(pickle, v));
            let offsets = offsets.map(|o| o.ok_or_else(|| bad("a storage index whose offset is not a size"))).transpose()?;
            let path = field(pickle, info, "relative_path").and_then(|p| pickle.text(p)).ok_or_else(|| bad("a storage entry without a file"))?;
            let count = |name| field(pickle, info, name).and_then(|n| pickle.int(n)).and_then(|n| u64::try_from(n).ok());
            let (Some(offset), Some(length)) = (count("offset"), count("length")) else { return Err(bad("a storage entry without an offset and a length")) };
            if field(pickle, info, "transform_descriptors").and_then(|t| pickle.sequence(t)).is_some_and(|t| !t.is_empty()) {
                return Err(OpenError::UnknownFormat(format!("{METADATA}: {fqn} is stored transformed (compressed), which wfs cannot read")));
            }
            stored.insert((fqn.into_owned(), offsets), (path.into_owned(), offset, length));
        }
        let mut model = Model::default();
        let mut objects = Map::new();
        for (key, entry) in entries {
            let fqn = key_name(pickle, key).ok_or_else(|| bad("a state_dict_metadata key that is not a string"))?;
            let class = pickle.object(entry).and_then(|o| pickle.class_name(o)).unwrap_or_default();
            if class.ends_with(".BytesStorageMetadata") {
                let value = match stored.get(&(fqn.clone(), None)) {
                    Some(at) => self.object(at).unwrap_or_else(|why| json!({"__unreadable__": why})),
                    None => json!({"__unreadable__": "not in storage_data"}),
                };
                objects.insert(fqn, value);
                continue;
            }
            match self.tensor(&fqn, entry, &stored) {
                Ok(tensor) => model.tensors.push(tensor),
                Err(reason) => model.skipped.push(SkippedTensor::new(TensorId::Name(fqn), reason)),
            }
        }
        model.info.insert("dcp_version".into(), field(pickle, root, "version").and_then(|v| pickle.text(v)).map_or(Json::Null, |v| json!(v)));
        let mut files: Vec<&String> = self.files.keys().collect();
        files.sort();
        model.info.insert("distcp_files".into(), json!(files));
        model.add_json(vec!["object.json".into()], &Json::Object(objects));
        Ok(model)
    }

    /// A tensor from its `TensorStorageMetadata`: dtype, size and chunks.
    fn tensor(&mut self, fqn: &str, entry: &Value, stored: &HashMap<(String, Option<Vec<u64>>), Stored>) -> Result<Tensor, String> {
        let pickle = self.pickle;
        let properties = field(pickle, entry, "properties").and_then(|p| pickle.object(p)).ok_or("no tensor properties")?;
        // TensorProperties pickles its fields as a tuple (dtype first) or as a dict.
        let dtype = match properties.state.as_ref().and_then(|s| pickle.sequence(s)) {
            Some(fields) => fields.first(),
            None => field(pickle, entry, "properties").and_then(|p| field(pickle, p, "dtype")),
        };
        let dtype = dtype.and_then(|d| pickle.global(d)).ok_or("tensor properties without a dtype")?.1;
        let dtype = super::torch_dtype(dtype)?;
        let shape = field(pickle, entry, "size").and_then(|s| dims(pickle, s)).ok_or("a size that is not a torch.Size")?;
        let chunks = field(pickle, entry, "chunks").and_then(|c| pickle.sequence(c)).ok_or("no chunk list")?;
        let mut tiles = Vec::with_capacity(chunks.len().min(4096));
        for chunk in chunks {
            let offsets = field(pickle, chunk, "offsets").and_then(|o| dims(pickle, o)).ok_or("a chunk without offsets")?;
            let sizes = field(pickle, chunk, "sizes").and_then(|s| dims(pickle, s)).ok_or("a chunk without sizes")?;
            let at = stored.get(&(fqn.to_string(), Some(offsets.clone()))).ok_or_else(|| format!("chunk at {offsets:?} is not in storage_data"))?;
            let saved = self.saved(at)?;
            let [chunk_tensor] = &saved.tensors[..] else { return Err(format!("chunk at {offsets:?} does not hold one tensor")) };
            if chunk_tensor.dtype != dtype || chunk_tensor.shape != sizes {
                return Err(format!("chunk at {offsets:?} holds {} {:?}, not {} {sizes:?}", chunk_tensor.dtype.name(), chunk_tensor.shape, dtype.name()));
            }
            tiles.push(Tile { start: offsets, len: sizes, bytes: Shared(chunk_tensor.bytes.clone()) });
        }
        let bytes: Arc<dyn TensorBytes> = match &mut tiles[..] {
            // One chunk holding the whole tensor (a scalar too) is the tensor.
            [whole] if whole.len == shape && whole.start.iter().all(|&s| s == 0) => whole.bytes.0.clone(),
            _ => Arc::new(Tiled::new(&shape, dtype.size() as u64, tiles, false)?),
        };
        Ok(Tensor::named(fqn, dtype, shape, bytes))
    }

    /// The `torch.save` zip stored at `at`, read as a model.
    fn saved(&mut self, (path, offset, length): &Stored) -> Result<Model, String> {
        if !self.files.contains_key(path) {
            let blob = self.dir.open(path).map_err(|e| format!("{path}: {e}"))?;
            self.files.insert(path.clone(), blob);
        }
        let file = &self.files[path];
        let item = file.slice(*offset, *length).map_err(|_| format!("{length} bytes at {offset} lie past the end of {path} ({} bytes)", file.len()))?;
        let archive = Archive::open(&item).map_err(|e| format!("{path} at {offset}: {e}"))?;
        super::read_zip(archive, self.options).map_err(|e| format!("{path} at {offset}: {e}"))
    }

    /// The value a `BytesStorageMetadata` item saved, as its `object.json`.
    fn object(&mut self, at: &Stored) -> Result<Json, String> {
        let saved = self.saved(at)?;
        let file = saved.files.iter().find(|f| f.path == ["object.json"]).ok_or("no object")?;
        let mut text = vec![0u8; file.bytes.len() as usize];
        file.bytes.read_at(0, &mut text).map_err(|e| e.to_string())?;
        serde_json::from_slice(&text).map_err(|e| e.to_string())
    }
}

/// A field of a pickled dataclass: its BUILD state is a dict, or `(None, slots dict)`.
fn field<'p>(pickle: &'p Pickle, v: &Value, name: &str) -> Option<&'p Value> {
    let state = pickle.object(v)?.state.as_ref()?;
    let dicts: Vec<&[(Value, Value)]> = match pickle.node(state)? {
        Node::Dict(items) => vec![items],
        Node::Tuple(parts) => parts.iter().filter_map(|p| dict(pickle, p)).collect(),
        _ => return None,
    };
    dicts.into_iter().flatten().find(|(k, _)| pickle.text(k).as_deref() == Some(name)).map(|(_, v)| v)
}

fn dict<'p>(pickle: &'p Pickle, v: &Value) -> Option<&'p [(Value, Value)]> {
    match pickle.node(v)? {
        Node::Dict(items) => Some(items),
        _ => None,
    }
}

fn key_name(pickle: &Pickle, key: &Value) -> Option<String> {
    pickle.text(key).map(|k| k.into_owned())
}

/// Non-negative integers of a `torch.Size` (or a plain tuple).
fn dims(pickle: &Pickle, v: &Value) -> Option<Vec<u64>> {
    let items = match pickle.sequence(v) {
        Some(items) => items,
        None => pickle.sequence(pickle.object(v)?.args.first()?)?,
    };
    items.iter().map(|d| pickle.int(d).and_then(|d| u64::try_from(d).ok())).collect()
}
