//! TensorFlow SavedModels (docs/formats/tensorflow.md#savedmodel): a directory, or a zip holding one at its root or one
//! folder down (members read in place, never extracted). `variables/` is the tensor bundle at
//! `variables/variables`, read as a checkpoint; `signatures.json` and the `info.json` fields come
//! from `saved_model.pb`; `layers/` and `config.json` from the Keras metadata where the model
//! has it, else from the variables' own names (Keras 3 exports).

use super::archive::Archive;
use super::bundle::TensorShapeProto;
use super::tf_bundle::{self, TrackableObjectGraph};
use super::keras::{add_layer_dir, layer_name, weight_path};
use crate::dtype::DType;
use crate::error::OpenError;
use crate::model::{Extent, Model, ModelFile, Tensor, path_of};
use crate::names::split_path;
use crate::source::{Blob, Dir, EntryKind};
use prost::Message;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// protobuf's own limit for one serialized message.
const MAX_PROTO: u64 = 2 << 30;
/// Deepest directory or object nesting followed (guards against hostile sources).
const MAX_DEPTH: usize = 64;

/// `true` if the directory looks like a SavedModel: it has `saved_model.pb` (or its text form),
/// or at least the `variables/` bundle of one.
pub fn is_savedmodel_dir(dir: &Dir) -> bool {
    ["saved_model.pb", "saved_model.pbtxt", "variables/variables.index"].iter().any(|f| dir.has_file(f))
}

/// A SavedModel directory.
pub fn open_dir(dir: Dir) -> Result<Model, OpenError> {
    read(Files::Dir(dir))
}

/// The member-name prefix of the SavedModel in a zip: `""` for `saved_model.pb` at the root,
/// `"<folder>/"` one folder down; `None` if the archive holds none.
pub fn root_in(archive: &mut Archive) -> Option<String> {
    if archive.index_for_name("saved_model.pb").is_some() {
        return Some(String::new());
    }
    let mut roots: Vec<String> = archive
        .file_names()
        .into_iter()
        .filter_map(|(_, name)| {
            let folder = name.strip_suffix("/saved_model.pb")?;
            // A folder name such as `..` would only be a tree name, but it is no SavedModel.
            let plain = !folder.is_empty() && folder != "." && folder != ".." && !folder.contains(['/', '\\']);
            plain.then(|| format!("{folder}/"))
        })
        .collect();
    roots.sort();
    roots.into_iter().next()
}

/// A SavedModel in a zip archive, below its [`root_in`].
pub fn read_zip(mut archive: Archive) -> Result<Model, OpenError> {
    let root = root_in(&mut archive).ok_or_else(|| OpenError::UnknownFormat("zip archive holds no saved_model.pb".into()))?;
    read(Files::Zip { archive, root })
}

/// Where the SavedModel's files are.
enum Files {
    Dir(Dir),
    /// A zip archive; `root` prefixes the member names of the SavedModel's files.
    Zip { archive: Archive, root: String },
}

impl Files {
    fn has(&self, rel: &str) -> bool {
        match self {
            Files::Dir(dir) => dir.has_file(rel),
            Files::Zip { archive, root } => archive.index_for_name(&format!("{root}{rel}")).is_some(),
        }
    }

    /// The file at `rel` (`/`-separated, below the SavedModel); the error says which and why.
    fn get(&mut self, rel: &str) -> Result<Blob, String> {
        match self {
            Files::Dir(dir) => {
                if !dir.has_file(rel) {
                    return Err(format!("{}: not a file", dir.shown(rel)));
                }
                dir.open_below(rel).map_err(|e| format!("{}: {e}", dir.shown(rel)))
            }
            Files::Zip { archive, root } => {
                let name = format!("{root}{rel}");
                let index = archive.index_for_name(&name).ok_or_else(|| format!("{name}: not in the archive"))?;
                archive.member(index).map_err(|e| e.to_string())
            }
        }
    }

    /// A whole protobuf file, `None` if there is no such file.
    fn proto(&mut self, rel: &str) -> Result<Option<Vec<u8>>, String> {
        if !self.has(rel) {
            return Ok(None);
        }
        let blob = self.get(rel)?;
        if blob.len() > MAX_PROTO {
            return Err(format!("{rel} is larger than a protobuf message can be"));
        }
        blob.read_vec(0, blob.len()).map(Some).map_err(|e| format!("{rel}: {e}"))
    }

    /// Every file below `assets/`, by its path below the SavedModel.
    fn assets(&mut self) -> Result<Vec<(String, Blob)>, OpenError> {
        match self {
            Files::Dir(dir) => {
                let mut found = Vec::new();
                if let Ok(assets) = dir.sub("assets") {
                    walk_files(&assets, "assets", 0, &mut found);
                }
                found
                    .into_iter()
                    .map(|rel| self.get(&rel).map(|blob| (rel, blob)).map_err(OpenError::unreadable))
                    .collect()
            }
            Files::Zip { archive, root } => {
                let names = archive.file_names();
                let mut assets = Vec::new();
                for (index, name) in names {
                    if let Some(rel) = name.strip_prefix(root.as_str()).filter(|r| r.starts_with("assets/")) {
                        assets.push((rel.to_string(), archive.member(index)?));
                    }
                }
                Ok(assets)
            }
        }
    }
}

/// Regular files below `dir`, as `/`-separated paths that start with `rel`; symlinks are not
/// followed, so nothing outside the SavedModel is served.
fn walk_files(dir: &Dir, rel: &str, depth: usize, found: &mut Vec<String>) {
    let Ok(entries) = dir.list() else { return };
    for entry in entries {
        let path = format!("{rel}/{}", entry.name);
        match entry.kind {
            EntryKind::File => found.push(path),
            EntryKind::Dir if depth < MAX_DEPTH => {
                if let Ok(sub) = dir.sub(&entry.name) {
                    walk_files(&sub, &path, depth + 1, found);
                }
            }
            EntryKind::Dir | EntryKind::Link => {}
        }
    }
}

fn read(mut files: Files) -> Result<Model, OpenError> {
    let mut model = Model::default();
    let saved = read_saved_model(&mut files);
    let has_variables = files.has("variables/variables.index");
    let meta_graph = match &saved {
        Ok(saved) => {
            let meta = serving_meta_graph(saved);
            let info = meta.meta_info_def.clone().unwrap_or_default();
            model.info.insert("tensorflow_version".into(), json!(info.tensorflow_version));
            model.info.insert("tags".into(), json!(info.tags));
            model.info.insert("saved_model_schema_version".into(), json!(saved.saved_model_schema_version));
            model.add_json(vec!["signatures.json".into()], &signatures_json(&meta.signature_def));
            Some(meta)
        }
        Err(why) if !has_variables => return Err(OpenError::corrupt(why.clone())),
        Err(why) => {
            log::warn!("{why}");
            model.info.insert("saved_model_error".into(), json!(why));
            None
        }
    };
    let metadata = match keras_metadata(&mut files, meta_graph) {
        Ok(metadata) => metadata,
        Err(why) => {
            log::warn!("{why}");
            model.info.insert("keras_metadata_error".into(), json!(why));
            HashMap::new()
        }
    };
    if let Some(root) = metadata.get(&0) {
        for (key, field) in [("keras_version", "keras_version"), ("class_name", "model_class")] {
            if let Some(v) = root.json.get(key) {
                model.info.insert(field.into(), v.clone());
            }
        }
    }
    if has_variables {
        let mut open = |suffix: &str| files.get(&format!("variables/variables{suffix}"));
        let mut budget = tf_bundle::MAX_STRING_TOTAL;
        let bundle = tf_bundle::load_bundle(&mut open, &[], &mut model, &mut budget)?;
        model.info.extend(bundle.info);
        model.skipped.extend(bundle.skipped);
        if let Some(graph) = &bundle.graph
            && !add_keras_layers(graph, &metadata, &bundle.variables, &mut model)
        {
            tf_bundle::add_keras_view(graph, &bundle.variables, &[], &mut model);
        }
    }
    for (rel, blob) in files.assets()? {
        let len = blob.len();
        model.files.push(ModelFile { path: split_path(&rel), bytes: Arc::new(Extent { blob, offset: 0, len }) });
    }
    Ok(model)
}

/// `saved_model.pb`, decoded; the error says what is wrong with it.
fn read_saved_model(files: &mut Files) -> Result<SavedModel, String> {
    let bytes = match files.proto("saved_model.pb")? {
        Some(bytes) => bytes,
        None if files.has("saved_model.pbtxt") => {
            return Err("saved_model.pbtxt (protobuf text format) is not supported; saved_model.pb is missing".into());
        }
        None => return Err("saved_model.pb is missing".into()),
    };
    let saved = SavedModel::decode(bytes.as_slice())
        .map_err(|e| format!("saved_model.pb ({} bytes) is not a SavedModel: {e}", bytes.len()))?;
    if saved.meta_graphs.is_empty() {
        return Err(format!("saved_model.pb ({} bytes) holds no MetaGraphDef", bytes.len()));
    }
    Ok(saved)
}

/// The MetaGraphDef tagged `serve` (what serving and `tf.saved_model.load` pick), else the first.
fn serving_meta_graph(saved: &SavedModel) -> &MetaGraphDef {
    let serve = |m: &&MetaGraphDef| m.meta_info_def.as_ref().is_some_and(|i| i.tags.iter().any(|t| t == "serve"));
    saved.meta_graphs.iter().find(serve).unwrap_or(&saved.meta_graphs[0])
}

/// `signatures.json`: every signature with its method and its input and output tensors, as
/// `saved_model_cli show --all` lists them.
fn signatures_json(signatures: &BTreeMap<String, SignatureDef>) -> Value {
    let tensors = |map: &BTreeMap<String, TensorInfo>| -> Value {
        map.iter()
            .map(|(key, info)| {
                let shape = info.tensor_shape.as_ref().map(|s| {
                    if s.unknown_rank { Value::Null } else { json!(s.dim.iter().map(|d| d.size).collect::<Vec<_>>()) }
                });
                json!({"name": key, "tensor": info.name, "dtype": tf_dtype_name(info.dtype), "shape": shape.unwrap_or(Value::Null)})
            })
            .collect()
    };
    let map: Map<String, Value> = signatures
        .iter()
        .map(|(key, sig)| {
            let entry = json!({"method_name": sig.method_name, "inputs": tensors(&sig.inputs), "outputs": tensors(&sig.outputs)});
            (key.clone(), entry)
        })
        .collect();
    Value::Object(map)
}

/// TensorFlow's name of a `DataType` (numpy's where they agree).
fn tf_dtype_name(code: i32) -> String {
    match code {
        0 => "invalid".into(),
        7 => "string".into(),
        11 => "qint8".into(),
        12 => "quint8".into(),
        13 => "qint32".into(),
        15 => "qint16".into(),
        16 => "quint16".into(),
        20 => "resource".into(),
        21 => "variant".into(),
        _ => DType::from_tf(code).map_or_else(|| format!("dtype_{code}"), DType::name),
    }
}

/// What Keras recorded about one object of the graph.
struct KerasObject {
    identifier: String,
    json: Value,
}

/// Keras metadata by node id: from `keras_metadata.pb` (tf-keras, TF >= 2.5), else from the
/// user objects of `saved_model.pb` (TF 2.0-2.4). Empty for models without (Keras 3, plain
/// modules); an error if the metadata is there but unreadable.
fn keras_metadata(files: &mut Files, meta_graph: Option<&MetaGraphDef>) -> Result<HashMap<usize, KerasObject>, String> {
    let nodes: Vec<(i64, String, String)> = match files.proto("keras_metadata.pb")? {
        Some(bytes) => SavedMetadata::decode(bytes.as_slice())
            .map_err(|e| format!("keras_metadata.pb is damaged: {e}"))?
            .nodes
            .into_iter()
            .map(|n| (i64::from(n.node_id), n.identifier, n.metadata))
            .collect(),
        None => meta_graph
            .and_then(|m| m.object_graph_def.as_ref())
            .map(|g| g.nodes.iter().enumerate())
            .into_iter()
            .flatten()
            .filter_map(|(i, node)| node.user_object.as_ref().map(|u| (i as i64, u.identifier.clone(), u.metadata.clone())))
            .filter(|(_, _, metadata)| !metadata.is_empty())
            .collect(),
    };
    let mut objects = HashMap::new();
    for (id, identifier, text) in nodes {
        let json: Value =
            serde_json::from_str(&text).map_err(|e| format!("Keras metadata of object {id} is not JSON: {e}"))?;
        if let Ok(id) = usize::try_from(id) {
            objects.insert(id, KerasObject { identifier, json });
        }
    }
    Ok(objects)
}

/// `config.json` and `layers/` from the Keras metadata: the root's config, then each layer of
/// `model.layers` with its config entry, index link and variables. `false` if the metadata
/// describes no Keras model.
fn add_keras_layers(graph: &TrackableObjectGraph, metadata: &HashMap<usize, KerasObject>, variables: &HashMap<String, Tensor>, model: &mut Model) -> bool {
    let (Some(root), Some(root_node)) = (metadata.get(&0), graph.nodes.first()) else { return false };
    let config = root.json.get("config");
    if let Some(config) = config {
        model.add_json(vec!["config.json".into()], &json!({"class_name": root.json.get("class_name"), "config": config}));
    }
    let entries = config.and_then(|c| c.get("layers")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    // Functional and Sequential models track `model.layers` as `layer-<i>`; a subclassed model's
    // layers are its attributes that Keras saved as layers.
    let mut layers: Vec<(Option<usize>, usize)> = root_node
        .children
        .iter()
        .filter_map(|c| Some((Some(c.local_name.strip_prefix("layer-")?.parse().ok()?), usize::try_from(c.node_id).ok()?)))
        .collect();
    layers.sort();
    if layers.is_empty() {
        let is_layer = |id: &usize| {
            metadata.get(id).is_some_and(|o| o.identifier.starts_with("_tf_keras_") && o.identifier != "_tf_keras_metric")
        };
        let mut seen = HashSet::new();
        layers = root_node
            .children
            .iter()
            .filter_map(|c| usize::try_from(c.node_id).ok())
            .filter(|id| is_layer(id) && seen.insert(*id))
            .map(|id| (None, id))
            .collect();
    }
    for (index, node) in layers {
        let Some(name) = metadata.get(&node).and_then(|o| o.json.get("name")).and_then(Value::as_str) else { continue };
        let entry = entries.iter().find(|e| layer_name(e) == Some(name));
        add_layer_dir(model, name, entry, index);
        for (edges, full_name, key) in variables_below(graph, node) {
            let Some(t) = variables.get(key) else { continue };
            let rel = if full_name.is_empty() { edges } else { weight_path(name, full_name) };
            model.tensors.push(Tensor { path: path_of(&["layers", name], &rel), ..t.clone() });
        }
    }
    true
}

/// The variables an object owns, each once, depth first in edge order: (edge path from the
/// object, variable name, checkpoint key).
fn variables_below(graph: &TrackableObjectGraph, start: usize) -> Vec<(Vec<String>, &str, &str)> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(start, Vec::new())];
    while let Some((id, edges)) = stack.pop() {
        let Some(node) = graph.nodes.get(id).filter(|_| seen.insert(id)) else { continue };
        for attr in node.attributes.iter().filter(|a| a.name == "VARIABLE_VALUE") {
            found.push((edges.clone(), attr.full_name.as_str(), attr.checkpoint_key.as_str()));
        }
        if edges.len() < MAX_DEPTH {
            // Reversed so that the first child is visited first.
            for child in node.children.iter().rev() {
                if let Ok(c) = usize::try_from(child.node_id) {
                    let mut next = edges.clone();
                    next.push(child.local_name.clone());
                    stack.push((c, next));
                }
            }
        }
    }
    found
}

// `saved_model.proto` and friends (docs/formats/tensorflow.md#messages), only the fields wfs shows; prost skips the
// rest (graph_def, function library, concrete functions), which is most of the bytes.

#[derive(Clone, PartialEq, prost::Message)]
struct SavedModel {
    #[prost(int64, tag = "1")]
    saved_model_schema_version: i64,
    #[prost(message, repeated, tag = "2")]
    meta_graphs: Vec<MetaGraphDef>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetaGraphDef {
    #[prost(message, optional, tag = "1")]
    meta_info_def: Option<MetaInfoDef>,
    #[prost(btree_map = "string, message", tag = "5")]
    signature_def: BTreeMap<String, SignatureDef>,
    #[prost(message, optional, tag = "7")]
    object_graph_def: Option<SavedObjectGraph>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetaInfoDef {
    #[prost(string, repeated, tag = "4")]
    tags: Vec<String>,
    #[prost(string, tag = "5")]
    tensorflow_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SignatureDef {
    #[prost(btree_map = "string, message", tag = "1")]
    inputs: BTreeMap<String, TensorInfo>,
    #[prost(btree_map = "string, message", tag = "2")]
    outputs: BTreeMap<String, TensorInfo>,
    #[prost(string, tag = "3")]
    method_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorInfo {
    /// Unset for sparse and composite tensors (the other members of the `encoding` oneof).
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, tag = "2")]
    dtype: i32,
    #[prost(message, optional, tag = "3")]
    tensor_shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SavedObjectGraph {
    #[prost(message, repeated, tag = "1")]
    nodes: Vec<SavedObject>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SavedObject {
    /// The `user_object` member of the `kind` oneof.
    #[prost(message, optional, tag = "4")]
    user_object: Option<SavedUserObject>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SavedUserObject {
    #[prost(string, tag = "1")]
    identifier: String,
    #[prost(string, tag = "3")]
    metadata: String,
}

/// `keras_metadata.pb` (tf_keras `saved_metadata.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct SavedMetadata {
    #[prost(message, repeated, tag = "1")]
    nodes: Vec<KerasNode>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KerasNode {
    #[prost(int32, tag = "2")]
    node_id: i32,
    #[prost(string, tag = "4")]
    identifier: String,
    #[prost(string, tag = "5")]
    metadata: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_saved_model_pb_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::Dir(Dir::Local(dir.path().to_path_buf()));
        assert_eq!(read_saved_model(&mut files).unwrap_err(), "saved_model.pb is missing");
        std::fs::write(dir.path().join("saved_model.pb"), b"\r\n").unwrap();
        assert!(read_saved_model(&mut files).unwrap_err().contains("is not a SavedModel"));
        std::fs::write(dir.path().join("saved_model.pb"), b"").unwrap();
        assert!(read_saved_model(&mut files).unwrap_err().contains("holds no MetaGraphDef"));
    }

    #[test]
    fn dtype_names_follow_tensorflow() {
        assert_eq!(tf_dtype_name(1), "float32");
        assert_eq!(tf_dtype_name(7), "string");
        assert_eq!(tf_dtype_name(20), "resource");
        assert_eq!(tf_dtype_name(0), "invalid");
        assert_eq!(tf_dtype_name(999), "dtype_999");
    }
}
