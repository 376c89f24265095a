//! The Keras contract a model rebuild relies on (TREE.md 1 and 5), against oracles Keras and
//! TensorFlow recorded at generation time: an existing path wins over a checkpoint prefix,
//! `layers/<i>` is always the i-th layer, and each layer's rows in `tensors.tsv` come in
//! `layer.weights` order.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

fn format_of(mount: &Mount) -> String {
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    info["format"].as_str().unwrap().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A SavedModel directory `model/` beside a checkpoint `model.index` + `model.data-*` (a
/// training script that saved both under one name): `model` is the directory, `model.index`
/// the checkpoint, and once the directory is gone `model` is the checkpoint prefix.
#[test]
fn an_existing_path_wins_over_a_checkpoint_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&fixture("savedmodel/tfk_functional"), &model);
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
