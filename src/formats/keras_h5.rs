//! Keras HDF5 files: full models and weights-only files from Keras 1, 2, tf.keras and Keras 3's
//! legacy writer (docs/formats/keras.md#legacy-hdf5-files). Keras 3 `.weights.h5` files are `keras3`'s; any other HDF5 file
//! is `h5_datasets`'s.

use super::h5::{self, H5Context, push_dataset};
use super::keras::{add_layer_dir, layer_name, strip_index_suffix, weight_path};
use crate::error::OpenError;
use crate::model::{Model, SkippedTensor, TensorId, path_of};
use crate::names::split_path;
use hdf5::Group;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Deepest group nesting followed in a weights group without `weight_names` (guards against
/// hostile files).
const MAX_GROUP_DEPTH: usize = 64;

/// A whole model (`model.save`): the model config beside the `model_weights` group.
pub fn is_model_file(root: &Group) -> bool {
    h5::string_attr(root, "model_config").is_some() && h5::locked(|| root.group("model_weights").is_ok())
}

/// A weights-only file (`model.save_weights`): the layer list on the root.
pub fn is_weights_file(root: &Group) -> bool {
    h5::string_list_attr(root, "layer_names").is_some()
}

pub fn read_model(file: &hdf5::File, ctx: &H5Context) -> Result<Model, OpenError> {
    let root: &Group = file;
    let config_text = h5::string_attr(root, "model_config").unwrap_or_default();
    let weights = h5::locked(|| root.group("model_weights").ok()).ok_or_else(|| OpenError::corrupt("model_weights is not a group"))?;
    let mut model = Model::default();
    read_version_attrs(root, &mut model);
    let config: Value = serde_json::from_str(&config_text)
        .map_err(|e| OpenError::corrupt(format!("model_config is not JSON: {e}")))?;
    if let Some(class) = config.get("class_name") {
        model.info.insert("model_class".into(), class.clone());
    }
    model.add_file(vec!["config.json".into()], config_text.into_bytes());
    read_layers(&weights, Some(&config), ctx, &mut model);
    if let Some(opt) = h5::locked(|| root.group("optimizer_weights").ok()) {
        read_weight_list(&opt, &["optimizer"], None, ctx, &mut model);
    }
    Ok(model)
}

pub fn read_weights(file: &hdf5::File, ctx: &H5Context) -> Model {
    let mut model = Model::default();
    read_version_attrs(file, &mut model);
    read_layers(file, None, ctx, &mut model);
    model
}

fn read_version_attrs(root: &Group, model: &mut Model) {
    for key in ["keras_version", "backend"] {
        if let Some(v) = h5::string_attr(root, key) {
            model.info.insert(key.into(), json!(v));
        }
    }
}

/// `layers/<name>/` for every entry of `layer_names`, in `model.layers` order, with its config
/// entry, its weights and an index link.
fn read_layers(weights: &Group, config: Option<&Value>, ctx: &H5Context, model: &mut Model) {
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
            read_weight_list(&group, &["layers", name], Some(name), ctx, model);
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
/// each sublayer's weights back together in the model's order (docs/tree.md 5), keeping the file's
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
fn read_weight_list(group: &Group, prefix: &[&str], layer: Option<&str>, ctx: &H5Context, model: &mut Model) {
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
                push_dataset(&ds, path, ctx, model);
            }
            None => model.skipped.push(SkippedTensor::new(TensorId::Path(path.join("/")), format!("weight {name} has no dataset"))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
