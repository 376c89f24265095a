//! Keras HDF5 files: full models and weights-only files from Keras 1, 2, tf.keras and Keras 3's
//! legacy writer (FORMATS.md 1); Keras 3 `.weights.h5` files go to `keras3`; any other HDF5 file
//! shows its datasets under `datasets/`.

use super::h5::{self, H5Context, Skipped};
use super::keras3;
use crate::error::OpenError;
use crate::model::{Model, ModelLink, path_of};
use crate::names::split_path;
use hdf5::Group;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Deepest group nesting followed in a plain HDF5 file (guards against hostile files).
const MAX_GROUP_DEPTH: usize = 64;

pub fn read(file: &hdf5::File, ctx: &H5Context) -> Result<Model, OpenError> {
    let root: &Group = file;
    let model_config = h5::string_attr(root, "model_config");
    let weights_group = h5::locked(|| root.group("model_weights").ok());
    let mut model = Model::default();
    let mut skipped = Vec::new();
    match (weights_group, h5::string_list_attr(root, "layer_names")) {
        (Some(weights), _) if model_config.is_some() => {
            model.format = "keras-h5".into();
            read_version_attrs(root, &mut model);
            let config_text = model_config.unwrap_or_default();
            let config: Value = serde_json::from_str(&config_text)
                .map_err(|e| OpenError::corrupt(format!("model_config is not JSON: {e}")))?;
            if let Some(class) = config.get("class_name") {
                model.info.insert("model_class".into(), class.clone());
            }
            model.add_file(vec!["config.json".into()], config_text.into_bytes());
            read_layers(&weights, Some(&config), ctx, &mut model, &mut skipped);
            if let Some(opt) = h5::locked(|| root.group("optimizer_weights").ok()) {
                read_weight_list(&opt, &["optimizer"], None, ctx, &mut model, &mut skipped);
            }
        }
        (_, Some(_)) => {
            model.format = "keras-h5-weights".into();
            read_version_attrs(root, &mut model);
            read_layers(root, None, ctx, &mut model, &mut skipped);
        }
        _ if keras3::is_weights_file(root) => model = keras3::read_weights_file(file, ctx),
        _ => {
            model.format = "hdf5".into();
            let contents = h5::walk_group(root, MAX_GROUP_DEPTH);
            model.dirs.push(vec!["datasets".into()]);
            model.dirs.extend(contents.groups.iter().map(|g| path_of(&["datasets"], g)));
            for (path, ds) in contents.datasets {
                push_dataset(&ds, path_of(&["datasets"], &path), ctx, &mut model, &mut skipped);
            }
            for (path, why) in contents.unreadable {
                skipped.push(json!({"path": path_of(&["datasets"], &path).join("/"), "reason": why}));
            }
        }
    }
    if !skipped.is_empty() {
        model.info.insert("skipped".into(), Value::Array(skipped));
    }
    Ok(model)
}

fn read_version_attrs(root: &Group, model: &mut Model) {
    for key in ["keras_version", "backend"] {
        if let Some(v) = h5::string_attr(root, key) {
            model.info.insert(key.into(), json!(v));
        }
    }
}

/// Adds a dataset as the tensor at `path`, or records why it cannot be; `true` if added.
pub(super) fn push_dataset(ds: &hdf5::Dataset, path: Vec<String>, ctx: &H5Context, model: &mut Model, skipped: &mut Vec<Value>) -> bool {
    match h5::dataset_tensor(ds, path.clone(), ctx) {
        Ok(t) => {
            model.tensors.push(t);
            true
        }
        Err(Skipped(why)) => {
            log::warn!("skipping {}: {why}", path.join("/"));
            skipped.push(json!({"path": path.join("/"), "reason": why}));
            false
        }
    }
}

/// `layers/<name>/` (kept even when weightless), its `config.json` from the model config entry,
/// and the `layers/<index>` link in `model.layers` order.
pub(super) fn add_layer_dir(model: &mut Model, name: &str, entry: Option<&Value>, index: Option<usize>) {
    let dir = vec!["layers".to_string(), name.to_string()];
    model.dirs.push(dir.clone());
    if let Some(entry) = entry {
        model.add_json(path_of(&["layers", name], &["config.json".into()]), entry);
    }
    if let Some(index) = index {
        model.links.push(ModelLink { path: vec!["layers".into(), index.to_string()], target: dir });
    }
}

/// `layers/<name>/` for every entry of `layer_names`, in `model.layers` order, with its config
/// entry, its weights and an index link.
fn read_layers(weights: &Group, config: Option<&Value>, ctx: &H5Context, model: &mut Model, skipped: &mut Vec<Value>) {
    let layer_names = h5::string_list_attr(weights, "layer_names").unwrap_or_default();
    let entries = config.map(layer_entries).unwrap_or_default();
    // Name -> first config entry of that name (a linear search per layer made mounts quadratic).
    let mut by_name = HashMap::new();
    for entry in entries {
        if let Some(name) = layer_name(entry) {
            by_name.entry(name).or_insert(entry);
        }
    }
    for (index, name) in layer_names.iter().enumerate() {
        let entry = by_name.get(name.as_str()).copied();
        add_layer_dir(model, name, entry, Some(index));
        if let Some(group) = h5::locked(|| weights.group(name).ok()) {
            let first = model.tensors.len();
            read_weight_list(&group, &["layers", name], Some(name), ctx, model, skipped);
            if let Some(entry) = entry.filter(|e| !layer_entries(e).is_empty()) {
                let paths = layer_paths(entry);
                // Below `layers/<name>/`: the weight's path inside the nested model.
                model.tensors[first..].sort_by_cached_key(|t| nested_order(&paths, &t.path[2..]));
            }
        }
    }
}

/// Every layer of a nested model's config (at any depth) by name: its index path (index in its
/// model's layers, from the outermost) and whether it is a model itself. Shallower layers win a
/// name that repeats.
fn layer_paths(entry: &Value) -> HashMap<&str, (Vec<usize>, bool)> {
    let mut paths = HashMap::new();
    let mut queue = std::collections::VecDeque::from([(Vec::new(), entry)]);
    while let Some((path, config)) = queue.pop_front() {
        for (i, sub) in layer_entries(config).iter().enumerate() {
            let mut sub_path = path.clone();
            sub_path.push(i);
            if let Some(name) = layer_name(sub) {
                paths.entry(name).or_insert_with(|| (sub_path.clone(), !layer_entries(sub).is_empty()));
            }
            queue.push_back((sub_path, sub));
        }
    }
    paths
}

/// Where a nested model's weight comes in its `layer.weights`: the index path of the layer it
/// belongs to. The legacy HDF5 writers store a layer's trainable weights before the others,
/// which for a nested model tears its sublayers' weights apart; a stable sort by this key puts
/// each sublayer's weights back together in the model's order (TREE.md 5), keeping the file's
/// order within a sublayer (its `layer.weights`). `rel` is the weight's path below the nested
/// model's directory: tf_keras scopes it by its own layer alone (`core_dense/kernel` for a
/// layer of a model nested in the nested model), Keras 3 by every level (`core/core_dense/kernel`).
fn nested_order(paths: &HashMap<&str, (Vec<usize>, bool)>, rel: &[String]) -> Vec<usize> {
    let mut key = vec![usize::MAX];
    for component in rel {
        let Some((path, is_model)) = paths.get(component.as_str()) else { break };
        key.clone_from(path);
        if !is_model {
            break;
        }
    }
    key
}

/// The datasets a group's `weight_names` lists (every dataset below it if the list is missing).
fn read_weight_list(group: &Group, prefix: &[&str], layer: Option<&str>, ctx: &H5Context, model: &mut Model, skipped: &mut Vec<Value>) {
    let names = h5::string_list_attr(group, "weight_names");
    let datasets: Vec<(String, Option<hdf5::Dataset>)> = match names {
        Some(names) => names.into_iter().map(|n| {
            let ds = h5::locked(|| group.dataset(&n).ok());
            (n, ds)
        }).collect(),
        None => h5::walk_group(group, MAX_GROUP_DEPTH).datasets.into_iter().map(|(p, ds)| (p.join("/"), Some(ds))).collect(),
    };
    for (name, ds) in datasets {
        let rel = match layer {
            Some(layer) => weight_path(layer, &name),
            None => split_path(strip_index_suffix(&name)),
        };
        let path = path_of(prefix, &rel);
        match ds {
            Some(ds) => {
                push_dataset(&ds, path, ctx, model, skipped);
            }
            None => skipped.push(json!({"path": path.join("/"), "reason": format!("weight {name} has no dataset")})),
        }
    }
}

/// Drops the `:0` TensorFlow output index from a variable name.
fn strip_index_suffix(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((base, idx)) if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// A weight's path below its layer: `dense_1/kernel:0` -> `kernel`, `lstm/lstm_cell/kernel:0`
/// -> `lstm_cell/kernel`, Keras 3.6+ `seq/conv/kernel` -> `kernel`, Keras 1 `dense_1_W:0` -> `W`;
/// names that do not start with the layer's scope (nested models: `bn/gamma:0`) stay whole.
pub fn weight_path(layer: &str, weight: &str) -> Vec<String> {
    let parts = split_path(strip_index_suffix(weight));
    let is_scope = |c: &str| {
        c == layer
            || c.strip_prefix(layer).and_then(|r| r.strip_prefix('_')).is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
    };
    match parts.as_slice() {
        [] => vec![weight.to_string()],
        [single] => match single.strip_prefix(layer).and_then(|r| r.strip_prefix('_')) {
            Some(rest) if !rest.is_empty() => vec![rest.to_string()],
            _ => vec![single.clone()],
        },
        [first, rest @ ..] if is_scope(first) => rest.to_vec(),
        [_, second, rest @ ..] if second == layer && !rest.is_empty() => rest.to_vec(),
        _ => parts,
    }
}

/// The top-level layer entries of a model config (Functional/Sequential, Keras 1 list form);
/// none for the config of a layer that is not a model.
fn layer_entries(config: &Value) -> &[Value] {
    let inner = config.get("config").unwrap_or(config);
    let list = match inner {
        Value::Array(items) => Some(items),
        Value::Object(map) => map.get("layers").and_then(Value::as_array),
        _ => None,
    };
    list.map_or(&[], Vec::as_slice)
}

pub(super) fn layer_name(entry: &Value) -> Option<&str> {
    entry.get("name").and_then(Value::as_str).or_else(|| entry.get("config")?.get("name")?.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_names_of_every_keras_generation() {
        let p = |l: &str, w: &str| weight_path(l, w).join("/");
        assert_eq!(p("dense_1", "dense_1/kernel:0"), "kernel");
        assert_eq!(p("embedding_1", "embedding_1_2/embeddings:0"), "embeddings");
        assert_eq!(p("lstm", "lstm/lstm_cell/kernel:0"), "lstm_cell/kernel");
        assert_eq!(p("bidi", "bidi/forward_gru/gru_cell/kernel:0"), "forward_gru/gru_cell/kernel");
        assert_eq!(p("inner_seq", "bn/gamma:0"), "bn/gamma");
        assert_eq!(p("conv1d_15", "sequential_7/conv1d_15/kernel"), "kernel");
        assert_eq!(p("inner_seq", "inner_seq/bn/gamma"), "bn/gamma");
        assert_eq!(p("convolution2d_19", "convolution2d_19_W:0"), "W");
        assert_eq!(p("batchnormalization_1", "batchnormalization_1_running_std:0"), "running_std");
        assert_eq!(p("d", "kernel:0"), "kernel");
    }

    #[test]
    fn optimizer_names_keep_their_scopes() {
        assert_eq!(split_path(strip_index_suffix("Adam/m/dense_1/kernel:0")), vec!["Adam", "m", "dense_1", "kernel"]);
        assert_eq!(strip_index_suffix("iteration:0"), "iteration");
        assert_eq!(strip_index_suffix("a:b"), "a:b");
    }

    #[test]
    fn nested_models_order_weights_by_sublayer() {
        let inner: Value = serde_json::from_str(
            r#"{"class_name":"Sequential","config":{"name":"inner","layers":[
                {"class_name":"BatchNormalization","config":{"name":"bn"}},
                {"class_name":"Sequential","config":{"name":"core","layers":[
                    {"class_name":"Dense","config":{"name":"core_dense"}},
                    {"class_name":"BatchNormalization","config":{"name":"core_bn"}}]}},
                {"class_name":"Dense","config":{"name":"dense"}}]}}"#,
        )
        .unwrap();
        let paths = layer_paths(&inner);
        let key = |rel: &str| nested_order(&paths, &split_path(rel));
        assert_eq!(key("bn/moving_mean"), vec![0]);
        assert_eq!(key("core_dense/kernel"), vec![1, 0]);
        assert_eq!(key("core/core_bn/gamma"), vec![1, 1]);
        assert_eq!(key("dense/bias"), vec![2]);
        assert_eq!(key("unknown/w"), vec![usize::MAX]);
    }

    #[test]
    fn layer_entries_of_keras1_and_functional() {
        let k1: Value = serde_json::from_str(r#"{"class_name":"Sequential","config":[{"class_name":"Dense","config":{"name":"d"}}]}"#).unwrap();
        assert_eq!(layer_name(&layer_entries(&k1)[0]), Some("d"));
        let f: Value = serde_json::from_str(r#"{"class_name":"Functional","config":{"layers":[{"name":"x","class_name":"InputLayer","config":{}}]}}"#).unwrap();
        assert_eq!(layer_name(&layer_entries(&f)[0]), Some("x"));
    }
}
