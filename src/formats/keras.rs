//! Keras layer helpers shared by the Keras readers (HDF5, Keras 3, SavedModel): a layer's
//! directory in the tree, its name in a config entry, and a weight's path below its layer.

use crate::model::{Model, ModelLink, path_of};
use crate::names::split_path;
use serde_json::Value;

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

pub(super) fn layer_name(entry: &Value) -> Option<&str> {
    entry.get("name").and_then(Value::as_str).or_else(|| entry.get("config")?.get("name")?.as_str())
}

/// Drops the `:0` TensorFlow output index from a variable name.
pub(super) fn strip_index_suffix(name: &str) -> &str {
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
}
