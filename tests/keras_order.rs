//! The Keras contract a model rebuild relies on (docs/tree.md 1 and 5), against oracles Keras and
//! TensorFlow recorded at generation time: an existing path wins over a checkpoint prefix,
//! `layers/<i>` is always the i-th layer, and each layer's rows in `tensors.tsv` come in
//! `layer.weights` order.

use crate::common::*;
use serde_json::Value;
use std::path::Path;

fn format_of(mount: &Mount) -> String {
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    info["format"].as_str().unwrap().to_string()
}

/// A SavedModel directory `model/` beside a checkpoint `model.index` + `model.data-*` (a
/// training script that saved both under one name): `model` is the directory, `model.index`
/// the checkpoint, and once the directory is gone `model` is the checkpoint prefix.
#[test]
fn an_existing_path_wins_over_a_checkpoint_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_tree(&fixture("savedmodel/tfk_functional"), &model);
    for suffix in [".index", ".data-00000-of-00001"] {
        std::fs::copy(fixture(&format!("ckpt/tf2_keras/ckpt-1{suffix}")), tmp.path().join(format!("model{suffix}"))).unwrap();
    }
    let saved = Mount::new(&model, &[]);
    assert_eq!(format_of(&saved), "tf-savedmodel");
    check_expect(&saved, &load_json(&fixture("savedmodel/tfk_functional.expect.json")));
    drop(saved);

    let checkpoint = load_json(&fixture("ckpt/tf2_keras.ckpt-1.expect.json"));
    let index = Mount::new(&tmp.path().join("model.index"), &[]);
    assert_eq!(format_of(&index), "tf-checkpoint");
    check_expect(&index, &checkpoint);
    drop(index);

    std::fs::remove_dir_all(&model).unwrap();
    let prefix = Mount::new(&model, &[]);
    assert_eq!(format_of(&prefix), "tf-checkpoint");
    check_expect(&prefix, &checkpoint);
}

/// The oracles of tests/fixtures/order (make_keras_order.py), by fixture path.
fn order_fixtures() -> Vec<(String, Value)> {
    let dir = fixture("order");
    let mut found = Vec::new();
    for entry in walk(&dir) {
        let rel = entry.strip_prefix(&dir).unwrap().to_str().unwrap().to_string();
        if let Some(name) = rel.strip_suffix(".expect.json") {
            found.push((name.to_string(), load_json(&entry)));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

/// `tensors.tsv` rows below `layers/`: (layer directory, path of the `.raw`), in table order.
fn layer_rows(mount: &Mount) -> Vec<(String, String)> {
    mount
        .text("tensors.tsv")
        .lines()
        .skip(1)
        .filter_map(|line| {
            let path = line.split('\t').next()?;
            let below = path.strip_prefix("layers/")?;
            let (dir, _) = below.split_once('/')?;
            Some((dir.to_string(), format!("{}.raw", path.trim_end_matches(".npy"))))
        })
        .collect()
}

/// Every fixture: `layers/<i>` is the i-th layer of `model.layers` (decimal names suffixed),
/// and each layer's rows in `tensors.tsv` are its `layer.weights`, in that order.
#[test]
fn layers_are_indexed_and_ordered_as_keras_has_them() {
    let fixtures = order_fixtures();
    assert_eq!(fixtures.len(), 14, "{:?}", fixtures.iter().map(|f| &f.0).collect::<Vec<_>>());
    let mut wrong = Vec::new();
    for (name, expect) in fixtures {
        let mount = Mount::new(&fixture(&format!("order/{name}")), &[]);
        let dirs = expect["dirs"].as_array().unwrap();
        if let Some(layers) = expect["layers"].as_array() {
            for (i, (layer, dir)) in layers.iter().zip(dirs).enumerate() {
                let link = std::fs::read_link(mount.path(&format!("layers/{i}"))).unwrap_or_else(|e| panic!("{name}: layers/{i}: {e}"));
                assert_eq!(link.to_str(), dir["dir"].as_str(), "{name}: layers/{i} is {layer}");
                assert!(mount.path(&format!("layers/{i}/")).is_dir(), "{name}: layers/{i}");
            }
            assert!(!mount.path(&format!("layers/{}", layers.len())).exists(), "{name}");
        }
        let rows = layer_rows(&mount);
        for entry in dirs {
            let dir = entry["dir"].as_str().unwrap();
            let got: Vec<String> = rows.iter().filter(|(d, _)| d == dir).map(|(_, raw)| sha256_hex(&mount.read(raw))).collect();
            let digests = |key: &str| -> Option<Vec<&str>> {
                Some(entry.get(key)?.as_array()?.iter().map(|w| w["sha256"].as_str().unwrap()).collect())
            };
            let keras_order = digests("weights").unwrap();
            // A checkpoint does not record which variables are trainable: where Keras lists
            // them trainable first against their creation order, creation order is what it gives.
            let want = match digests("checkpoint_order") {
                Some(created) => {
                    assert_ne!(created, keras_order, "{name}: layers/{dir}: the oracle's two orders agree");
                    created
                }
                None => keras_order,
            };
            if got != want {
                let index = |g: &String| want.iter().position(|w| w == g).map_or("?".to_string(), |i| i.to_string());
                wrong.push(format!("{name}: layers/{dir}: rows are layer.weights [{}]", got.iter().map(index).collect::<Vec<_>>().join(",")));
            }
        }
        let listed: usize = dirs.iter().map(|d| d["weights"].as_array().unwrap().len()).sum();
        assert_eq!(rows.len(), listed, "{name}: layers/ holds tensors that are no layer's weights: {rows:#?}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
