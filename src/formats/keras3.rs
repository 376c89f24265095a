//! Keras 3 saving (docs/formats/keras.md#keras-3-keras-archive-and-weightsh5): `.keras` zip archives, standalone `.weights.h5` files and
//! sharded `.weights.json` indexes with their `*_NNNNN.weights.h5` shards.
//!
//! Every saveable object stores its own variables by index in `<path>/vars/<i>`. Names come
//! from `vars@name` (Keras >= 3.6), else from config.json (docs/formats/keras.md#mapping-groups-to-configjson-layer-names); variable names from
//! Keras's own creation order for built-in layers (docs/formats/keras.md#index-to-variable-name-for-built-in-layers), else the index stays.

use super::archive::Archive;
use super::h5::{self, H5Context, push_dataset};
use super::keras::{add_layer_dir, layer_name};
use super::options::ReadOptions;
use crate::error::OpenError;
use crate::model::{Extent, Model, ModelFile};
use crate::names::split_path;
use crate::source::{Blob, Dir};
use hdf5::{Dataset, Group, LocationType};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Deepest object nesting followed (guards against hostile files).
const MAX_DEPTH: usize = 64;
/// Largest JSON document read (config.json, metadata.json, a sharded weights index).
const MAX_JSON: u64 = 64 << 20;

/// True for an HDF5 root in the `.weights.h5` layout: the model's own `vars` group beside the
/// `layers` or `optimizer` objects.
pub fn is_weights_file(root: &Group) -> bool {
    let has = |name: &str| h5::locked(|| root.group(name).is_ok());
    has("vars") && (has("layers") || has("optimizer"))
}

/// A standalone `.weights.h5` file (no config: names come from the file alone).
pub fn read_weights_file(file: &hdf5::File, ctx: &H5Context) -> Model {
    let mut model = Model::default();
    read_weights(&[(file, ctx)], None, &mut model);
    model
}

/// A `.keras` archive.
pub fn read_archive(mut zip: Archive, options: &ReadOptions) -> Result<Model, OpenError> {
    let Some(weights_index) = zip.index_for_name("model.weights.h5") else {
        return Err(if zip.index_for_name("model.weights.npz").is_some() {
            OpenError::UnknownFormat("Keras archive with .npz weights (pickled), which wfs cannot read".into())
        } else {
            OpenError::UnknownFormat(
                "zip archive without model.weights.h5 or saved_model.pb: neither a Keras .keras file nor a SavedModel".into(),
            )
        });
    };
    let mut model = Model::default();
    if let Some(i) = zip.index_for_name("metadata.json") {
        let metadata: Value = serde_json::from_slice(&zip.read_member(i, MAX_JSON)?)
            .map_err(|e| OpenError::corrupt(format!("metadata.json is not JSON: {e}")))?;
        for key in ["keras_version", "date_saved"] {
            if let Some(v) = metadata.get(key) {
                model.info.insert(key.into(), v.clone());
            }
        }
    }
    let config = match zip.index_for_name("config.json") {
        Some(i) => {
            let text = zip.read_member(i, MAX_JSON)?;
            let config: Value = serde_json::from_slice(&text)
                .map_err(|e| OpenError::corrupt(format!("config.json is not JSON: {e}")))?;
            if let Some(class) = config.get("class_name") {
                model.info.insert("model_class".into(), class.clone());
            }
            model.add_file(vec!["config.json".into()], text);
            Some(config)
        }
        None => None,
    };
    let weights = zip.member(weights_index)?;
    let file = h5::open_blob(&weights)?;
    read_weights(&[(&file, &H5Context { blob: weights, cache: options.cache.clone() })], config.as_ref(), &mut model);
    for (i, name) in zip.file_names() {
        if name.starts_with("assets/") {
            let blob = zip.member(i)?;
            let len = blob.len();
            model.files.push(ModelFile { path: split_path(&name), bytes: Arc::new(Extent { blob, offset: 0, len }) });
        }
    }
    Ok(model)
}

/// A sharded weights index (`m.weights.json`) and the shards beside it in `dir`.
pub fn read_sharded(index: &Blob, dir: Option<&Dir>, options: &ReadOptions) -> Result<Model, OpenError> {
    let not_index = || OpenError::UnknownFormat("JSON file that is not a Keras sharded weights index (no weight_map)".into());
    if index.len() > MAX_JSON {
        return Err(not_index());
    }
    let text = index.read_vec(0, index.len()).map_err(|e| OpenError::unreadable(e.to_string()))?;
    let index: Value = serde_json::from_slice(&text).map_err(|_| not_index())?;
    let map = index.get("weight_map").and_then(Value::as_object).ok_or_else(not_index)?;
    let dir = dir.ok_or_else(|| {
        OpenError::UnknownFormat("a sharded weights index needs its shard files: mount the .weights.json file itself".into())
    })?;
    // A value is a shard name or a list of them (a group split across shards).
    let mut names: Vec<&str> = Vec::new();
    for value in map.values() {
        let listed: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for name in listed {
            let name = name.as_str().ok_or_else(|| OpenError::corrupt("weight_map lists a shard that is not a file name"))?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let mut shards = Vec::new();
    for name in names {
        let blob = dir.open(name).map_err(|e| match e {
            OpenError::Corrupt(_) => OpenError::corrupt(format!("shard name {name:?} is not a file beside the index")),
            other => OpenError::unreadable(format!("shard {name}: {other}")),
        })?;
        if !h5::has_signature(&blob) {
            return Err(OpenError::corrupt(format!("shard {name} is not an HDF5 file")));
        }
        shards.push((h5::open_blob(&blob)?, H5Context { blob, cache: options.cache.clone() }));
    }
    let mut model = Model::default();
    model.info.insert("shards".into(), json!(shards.len()));
    let refs: Vec<(&hdf5::File, &H5Context)> = shards.iter().map(|(f, c)| (f, c)).collect();
    read_weights(&refs, None, &mut model);
    Ok(model)
}

/// One variable: `vars/<name>` of shard `shard`.
struct Var {
    name: String,
    dataset: Dataset,
    shard: usize,
}

/// A saveable object of the weights file, merged over shards.
#[derive(Default)]
struct Saveable {
    /// `vars@name`: the object's `.name` (Keras >= 3.6).
    label: Option<String>,
    /// Own variables, by index.
    vars: Vec<Var>,
    /// Child objects by group name, in creation order.
    children: Vec<(String, Saveable)>,
    /// (shard, object address) where first seen: sorts siblings into creation order.
    order: (usize, u64),
}

impl Saveable {
    fn child(&self, name: &str) -> Option<&Saveable> {
        self.children.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    fn load(&mut self, group: &Group, shard: usize, depth: usize) {
        for child in h5::children(group) {
            if child.kind != LocationType::Group {
                continue;
            }
            let Some(sub) = h5::locked(|| group.group(&child.name).ok()) else { continue };
            if child.name == "vars" {
                // Only one shard carries the name of an object whose variables are split.
                self.label = self.label.take().or_else(|| h5::string_attr(&sub, "name"));
                for var in h5::children(&sub).into_iter().filter(|c| c.kind == LocationType::Dataset) {
                    if let Some(dataset) = h5::locked(|| sub.dataset(&var.name).ok()) {
                        self.vars.push(Var { name: var.name, dataset, shard });
                    }
                }
            } else if depth > 0 {
                let pos = match self.children.iter().position(|(n, _)| *n == child.name) {
                    Some(pos) => pos,
                    None => {
                        let fresh = Saveable { order: (shard, child.address), ..Saveable::default() };
                        self.children.push((child.name.clone(), fresh));
                        self.children.len() - 1
                    }
                };
                self.children[pos].1.load(&sub, shard, depth - 1);
            }
        }
    }

    fn sort(&mut self) {
        self.vars.sort_by_cached_key(|v| (v.name.parse::<u64>().unwrap_or(u64::MAX), v.name.clone()));
        self.children.sort_by_key(|(_, c)| c.order);
        for (_, c) in &mut self.children {
            c.sort();
        }
    }
}

/// Reads the weights of one file or of all shards into `model`.
fn read_weights(files: &[(&hdf5::File, &H5Context)], config: Option<&Value>, model: &mut Model) {
    let mut root = Saveable::default();
    for (shard, (file, _)) in files.iter().enumerate() {
        root.load(file, shard, MAX_DEPTH);
    }
    root.sort();
    let mut reader = Reader { contexts: files.iter().map(|(_, c)| *c).collect(), model, trainable: Vec::new() };
    // The model's own variables (subclassed models) have no names in the file.
    for var in &root.vars {
        reader.emit(var, vec!["vars".into(), var.name.clone()]);
        reader.trainable.push((Vec::new(), None));
    }
    let entries = config.and_then(|c| c.get("config")?.get("layers")?.as_array()).map(Vec::as_slice);
    let sequential = config.and_then(|c| c.get("class_name")).and_then(Value::as_str) == Some("Sequential");
    let empty = Saveable::default();
    reader.layers_list(root.child("layers").unwrap_or(&empty), &["layers".into()], entries, sequential, true, true);
    // Other attributes of a subclassed model are its layers too.
    for (group, obj) in root.children.iter().filter(|(n, _)| n != "layers" && n != "optimizer") {
        let name = obj.label.clone().unwrap_or_else(|| group.clone());
        add_layer_dir(reader.model, &name, None, None);
        reader.layer(obj, vec!["layers".into(), name], None, None, true);
    }
    if let Some(optimizer) = root.child("optimizer") {
        let class = config
            .and_then(|c| c.get("compile_config")?.get("optimizer"))
            .and_then(|o| o.get("class_name").or(Some(o)))
            .and_then(Value::as_str)
            .map(snake_case)
            .or_else(|| optimizer.label.clone());
        reader.optimizer(optimizer, class.as_deref());
    }
}

struct Reader<'a> {
    contexts: Vec<&'a H5Context>,
    model: &'a mut Model,
    /// `model.trainable_variables` in order: Keras variable path below the model, and shape
    /// (`None` when unknown, which makes optimizer slots unnameable).
    trainable: Vec<(Vec<String>, Option<Vec<u64>>)>,
}

impl Reader<'_> {
    /// Adds a variable as a tensor at `path`; its shape, if it could be exposed.
    fn emit(&mut self, var: &Var, path: Vec<String>) -> Option<Vec<u64>> {
        if push_dataset(&var.dataset, path, self.contexts[var.shard], self.model) {
            self.model.tensors.last().map(|t| t.shape.clone())
        } else {
            None
        }
    }

    /// The objects of a `layers` list (a model's `model.layers`) below `dir`. `entries` are the
    /// config's layer entries; `top` adds the `layers/<name>` directories, configs and links.
    fn layers_list(&mut self, list: &Saveable, dir: &[String], entries: Option<&[Value]>, sequential: bool, top: bool, trainable: bool) {
        let mut done = vec![false; list.children.len()];
        let mut used: HashMap<String, usize> = HashMap::new();
        for (index, entry) in entries
            .unwrap_or_default()
            .iter()
            .filter(|e| !(sequential && e.get("class_name").and_then(Value::as_str) == Some("InputLayer")))
            .enumerate()
        {
            // The group is named by class and repeat count (docs/formats/keras.md#mapping-groups-to-configjson-layer-names).
            let kind = snake_case(entry.get("class_name").and_then(Value::as_str).unwrap_or_default());
            let seen = used.entry(kind.clone()).or_insert(0);
            let group = if *seen == 0 { kind.clone() } else { format!("{kind}_{seen}") };
            *seen += 1;
            let pos = list.children.iter().position(|(n, _)| *n == group);
            let obj = pos.map(|p| &list.children[p].1);
            let name = obj.and_then(|o| o.label.clone()).or_else(|| layer_name(entry).map(str::to_string)).unwrap_or(group);
            if top {
                add_layer_dir(self.model, &name, Some(entry), Some(index));
            }
            if let (Some(pos), Some(obj)) = (pos, obj) {
                done[pos] = true;
                self.layer(obj, child_dir(dir, &name), Some(&kind), Some(entry), trainable);
            }
        }
        for ((group, obj), _) in list.children.iter().zip(done).filter(|(_, done)| !done) {
            let name = obj.label.clone().unwrap_or_else(|| group.clone());
            if top {
                add_layer_dir(self.model, &name, None, None);
            }
            self.layer(obj, child_dir(dir, &name), Some(&kind_of_group(group)), None, trainable);
        }
    }

    /// One layer at `dir`: its own variables, then its sublayers in Keras's variable order.
    fn layer(&mut self, obj: &Saveable, dir: Vec<String>, kind: Option<&str>, entry: Option<&Value>, trainable: bool) {
        let config = entry.and_then(|e| e.get("config"));
        let trainable = trainable && config.and_then(|c| c.get("trainable")).and_then(Value::as_bool) != Some(false);
        let (names, trainable_count) = variable_names(kind, config, obj.vars.len());
        for (i, var) in obj.vars.iter().enumerate() {
            let name = names.get(i).cloned().flatten().unwrap_or_else(|| var.name.clone());
            let path = child_dir(&dir, &name);
            let shape = self.emit(var, path.clone());
            if trainable && i < trainable_count {
                self.trainable.push((path[1..].to_vec(), shape));
            }
        }
        let position = |group: &str| obj.children.iter().position(|(n, _)| n == group);
        if let Some(pos) = position("layers") {
            // A nested Sequential or Functional model.
            let entries = config.and_then(|c| c.get("layers")).and_then(Value::as_array).map(Vec::as_slice);
            let sequential = entry.and_then(|e| e.get("class_name")).and_then(Value::as_str) == Some("Sequential");
            self.layers_list(&obj.children[pos].1, &dir, entries, sequential, false, trainable);
        }
        // Known sublayers first, in Keras's variable order; then the rest in creation order.
        let mut plan: Vec<(usize, Sublayer)> =
            known_sublayers(kind, config).into_iter().filter_map(|sub| Some((position(sub.group)?, sub))).collect();
        for (pos, (group, _)) in obj.children.iter().enumerate() {
            if group != "layers" && !plan.iter().any(|p| p.0 == pos) {
                // Every Keras RNN keeps its cell in `cell`, whose variables are named alike.
                let kind = (group == "cell").then(|| "rnn_cell".to_string());
                plan.push((pos, Sublayer { group: "", kind, entry: None, name: None }));
            }
        }
        for (pos, sub) in plan {
            let (group, child) = &obj.children[pos];
            let name = child.label.clone().or(sub.name).unwrap_or_else(|| group.clone());
            self.layer(child, child_dir(&dir, &name), sub.kind.as_deref(), sub.entry, trainable);
        }
    }

    /// `optimizer/`: slots named after the trainable variables when the layout checks out,
    /// else by index.
    fn optimizer(&mut self, obj: &Saveable, class: Option<&str>) {
        let names = self.slot_names(&obj.vars, class);
        for (i, var) in obj.vars.iter().enumerate() {
            let name = names.as_ref().map_or_else(|| var.name.clone(), |n| n[i].clone());
            self.emit(var, vec!["optimizer".into(), name]);
        }
        for (group, child) in &obj.children {
            let name = child.label.clone().unwrap_or_else(|| group.clone());
            self.layer(child, vec!["optimizer".into(), name], None, None, false);
        }
    }

    /// Names of the optimizer's variables (docs/formats/keras.md#weightsh5-layout): `iteration`, `learning_rate` (absent
    /// with a schedule), then per trainable variable its slots (`<path with _>_<slot>`), provided
    /// the count and every slot's shape agree with the model's trainable variables.
    fn slot_names(&self, vars: &[Var], class: Option<&str>) -> Option<Vec<String>> {
        let candidates: &[&[&str]] = match class? {
            "adam" | "adam_w" | "adamw" => &[&["momentum", "velocity"]],
            "sgd" => &[&["momentum"], &[]],
            "rm_sprop" | "rmsprop" => &[&["velocity"]],
            "adagrad" => &[&["accumulator"]],
            _ => return None,
        };
        if vars.iter().enumerate().any(|(i, v)| v.name != i.to_string()) {
            return None;
        }
        let shapes: Vec<Vec<u64>> = vars.iter().map(|v| h5::locked(|| v.dataset.shape()).iter().map(|&d| d as u64).collect()).collect();
        let trainable: Vec<(&Vec<String>, &Vec<u64>)> =
            self.trainable.iter().map(|(p, s)| s.as_ref().map(|s| (p, s))).collect::<Option<_>>()?;
        if !shapes.first()?.is_empty() {
            return None;
        }
        for slots in candidates {
            let k = slots.len();
            for with_rate in [true, false] {
                let base = if with_rate { 2 } else { 1 };
                if base + k * trainable.len() != vars.len() || (with_rate && !shapes[1].is_empty()) {
                    continue;
                }
                let fits = trainable
                    .iter()
                    .enumerate()
                    .all(|(j, (_, shape))| (0..k).all(|s| shapes[base + j * k + s] == **shape));
                if !fits {
                    continue;
                }
                let mut names = vec!["iteration".to_string()];
                if with_rate {
                    names.push("learning_rate".into());
                }
                for (path, _) in &trainable {
                    names.extend(slots.iter().map(|slot| format!("{}_{slot}", path.join("_"))));
                }
                return Some(names);
            }
        }
        None
    }
}

fn child_dir(dir: &[String], name: &str) -> Vec<String> {
    let mut path = dir.to_vec();
    path.push(name.to_string());
    path
}

/// The class of an object in a `layers` list from its group name: `snake_case(Class)` plus
/// `_<k>` for repeats.
fn kind_of_group(group: &str) -> String {
    match group.rsplit_once('_') {
        Some((base, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => base.to_string(),
        _ => group.to_string(),
    }
}

const KERNEL_BIAS: &[&str] = &[
    "dense", "einsum_dense", "conv1d", "conv2d", "conv3d", "conv1d_transpose", "conv2d_transpose", "conv3d_transpose",
    "depthwise_conv1d", "depthwise_conv2d",
];
const RNN_CELLS: &[&str] = &["rnn_cell", "simple_rnn_cell", "lstm_cell", "gru_cell", "conv_lstm_cell"];

/// Names of a built-in layer's own variables by index (docs/formats/keras.md#index-to-variable-name-for-built-in-layers), `None` where unknown,
/// and how many of them are trainable (they come first).
pub(crate) fn variable_names(kind: Option<&str>, config: Option<&Value>, count: usize) -> (Vec<Option<String>>, usize) {
    let flag = |key: &str| config.and_then(|c| c.get(key)).and_then(Value::as_bool).unwrap_or(true);
    let kind = kind.unwrap_or_default();
    // Optional variables come last, so fewer stored than listed means the leading ones.
    let leading = |list: &[&str]| -> Vec<Option<String>> {
        if count <= list.len() { list[..count].iter().map(|s| Some(s.to_string())).collect() } else { Vec::new() }
    };
    let exact = |list: Vec<&str>| -> Vec<Option<String>> {
        if list.len() == count { list.into_iter().map(|s| Some(s.to_string())).collect() } else { Vec::new() }
    };
    match kind {
        k if KERNEL_BIAS.contains(&k) => (leading(&["kernel", "bias"]), count),
        "separable_conv1d" | "separable_conv2d" => (leading(&["depthwise_kernel", "pointwise_kernel", "bias"]), count),
        k if RNN_CELLS.contains(&k) => (leading(&["kernel", "recurrent_kernel", "bias"]), count),
        "embedding" => (leading(&["embeddings"]), count),
        "p_re_lu" => (leading(&["alpha"]), count),
        "normalization" => (exact(vec!["mean", "variance", "count"]), 0),
        "batch_normalization" | "layer_normalization" | "group_normalization" => {
            let moving: &[&str] = if kind == "batch_normalization" { &["moving_mean", "moving_variance"] } else { &[] };
            let affine_count = count.saturating_sub(moving.len());
            let affine: Option<Vec<&str>> = match (config, affine_count) {
                (_, 2) => Some(vec!["gamma", "beta"]),
                (_, 0) => Some(Vec::new()),
                // One of gamma (`scale`) and beta (`center`) was dropped: only the config says which.
                (Some(_), 1) if flag("scale") != flag("center") => Some(vec![if flag("scale") { "gamma" } else { "beta" }]),
                _ => None,
            };
            match affine {
                Some(affine) => (exact(affine.iter().chain(moving).copied().collect()), affine.len()),
                None => {
                    let mut names: Vec<Option<String>> = vec![None; affine_count.min(count)];
                    names.extend(moving.iter().map(|s| Some(s.to_string())));
                    (names, affine_count)
                }
            }
        }
        _ => (Vec::new(), count),
    }
}

/// A sublayer of a built-in layer.
struct Sublayer<'c> {
    /// The attribute's group.
    group: &'static str,
    /// Its class (snake case), if known.
    kind: Option<String>,
    /// Its config entry, if the config has one.
    entry: Option<&'c Value>,
    /// Its name when the file has no `vars@name`.
    name: Option<String>,
}

/// Sublayers of built-in layers, in their variable order.
fn known_sublayers<'c>(kind: Option<&str>, config: Option<&'c Value>) -> Vec<Sublayer<'c>> {
    let inner = config.and_then(|c| c.get("layer"));
    let inner_kind = || inner.and_then(|l| l.get("class_name")).and_then(Value::as_str).map(snake_case);
    let inner_name = inner.and_then(layer_name);
    match kind.unwrap_or_default() {
        cell @ ("simple_rnn" | "lstm" | "gru") => {
            let cell_kind = format!("{cell}_cell");
            vec![Sublayer { group: "cell", kind: Some(cell_kind.clone()), entry: None, name: Some(cell_kind) }]
        }
        "bidirectional" => {
            let backward = config.and_then(|c| c.get("backward_layer")).filter(|b| b.is_object());
            let backward_kind = backward.and_then(|b| b.get("class_name")).and_then(Value::as_str).map(snake_case).or_else(inner_kind);
            let backward_name = backward.and_then(layer_name).map(str::to_string).or(inner_name.map(|n| format!("backward_{n}")));
            vec![
                Sublayer { group: "forward_layer", kind: inner_kind(), entry: inner, name: inner_name.map(|n| format!("forward_{n}")) },
                Sublayer { group: "backward_layer", kind: backward_kind, entry: backward.or(inner), name: backward_name },
            ]
        }
        "time_distributed" => vec![Sublayer { group: "layer", kind: inner_kind(), entry: inner, name: inner_name.map(str::to_string) }],
        "multi_head_attention" => [("query_dense", "query"), ("key_dense", "key"), ("value_dense", "value"), ("output_dense", "attention_output")]
            .into_iter()
            .map(|(group, name)| Sublayer { group, kind: Some("einsum_dense".into()), entry: None, name: Some(name.into()) })
            .collect(),
        _ => Vec::new(),
    }
}

/// Keras's `to_snake_case` (keras/src/utils/naming.py): drop non-word characters, split
/// `xWord` and `aB`, lowercase. `BatchNormalization` -> `batch_normalization`, `PReLU` -> `p_re_lu`.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().filter(|c| c.is_alphanumeric() || *c == '_').collect();
    // `(.)([A-Z][a-z]+)` -> `\1_\2`, matches taken left to right without overlap.
    let mut first = String::new();
    let mut free = 0;
    for (i, &c) in chars.iter().enumerate() {
        if i > free && c.is_ascii_uppercase() && chars.get(i + 1).is_some_and(char::is_ascii_lowercase) {
            first.push('_');
            free = i + 1 + chars[i + 1..].iter().take_while(|c| c.is_ascii_lowercase()).count();
        }
        first.push(c);
    }
    // `([a-z])([A-Z])` -> `\1_\2`.
    let mut out = String::new();
    let mut prev_lower = false;
    for c in first.chars() {
        if prev_lower && c.is_ascii_uppercase() {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase();
        out.push(c);
    }
    out.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_matches_keras() {
        for (class, snake) in [
            ("Dense", "dense"),
            ("BatchNormalization", "batch_normalization"),
            ("LSTM", "lstm"),
            ("Conv2D", "conv2d"),
            ("PReLU", "p_re_lu"),
            ("MultiHeadAttention", "multi_head_attention"),
            ("InputLayer", "input_layer"),
            ("GlobalAveragePooling1D", "global_average_pooling1d"),
            ("Conv2DTranspose", "conv2d_transpose"),
            ("SimpleRNN", "simple_rnn"),
            ("AdamW", "adam_w"),
        ] {
            assert_eq!(snake_case(class), snake, "{class}");
        }
    }

    #[test]
    fn group_names_give_classes() {
        assert_eq!(kind_of_group("dense_12"), "dense");
        assert_eq!(kind_of_group("conv2d"), "conv2d");
        assert_eq!(kind_of_group("batch_normalization_1"), "batch_normalization");
    }

    #[test]
    fn normalization_options_drop_variables() {
        let names = |kind: &str, config: Option<Value>, count: usize| {
            let (names, trainable) = variable_names(Some(kind), config.as_ref(), count);
            (names.into_iter().map(|n| n.unwrap_or_else(|| "?".into())).collect::<Vec<_>>().join(","), trainable)
        };
        assert_eq!(names("batch_normalization", None, 4), ("gamma,beta,moving_mean,moving_variance".into(), 2));
        assert_eq!(names("batch_normalization", Some(json!({"center": false})), 3), ("gamma,moving_mean,moving_variance".into(), 1));
        assert_eq!(names("batch_normalization", Some(json!({"scale": false})), 3), ("beta,moving_mean,moving_variance".into(), 1));
        assert_eq!(names("batch_normalization", None, 3), ("?,moving_mean,moving_variance".into(), 1));
        assert_eq!(names("layer_normalization", None, 2), ("gamma,beta".into(), 2));
        assert_eq!(names("dense", Some(json!({"use_bias": false})), 1), ("kernel".into(), 1));
        assert_eq!(names("dense", None, 3), ("".into(), 3));
        assert_eq!(names("normalization", None, 3), ("mean,variance,count".into(), 0));
    }
}
