//! Every Keras and TensorFlow source names its tensors by their path in the tree (docs/tree.md 7.1):
//! `tensors.tsv`'s fifth column and the `user.wfs.name` extended attribute of the tensor's
//! files, checked for every fixture against its oracle's tree paths, and for every Keras and
//! TensorFlow real-models item against its oracle's checkpoint keys or tensor count.

use crate::common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Checks every row of the mount's `tensors.tsv`: the name is the tensor's path without its
/// suffix, below its part (a checkpoint of a directory) if it has one, and the `.npy`/`.raw`
/// files carry it as `user.wfs.name`. Returns the names.
fn check_rows(mount: &Mount, what: &str) -> Vec<String> {
    let tsv = mount.text("tensors.tsv");
    let mut lines = tsv.lines();
    assert_eq!(lines.next(), Some("path\tdtype\tshape\tbytes\tname"), "{what}");
    let mut names = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 5, "{what}: {line:?}");
        let (path, name) = (fields[0], fields[4]);
        let stem = path.strip_suffix(".npy").or_else(|| path.strip_suffix(".raw")).unwrap_or_else(|| panic!("{what}: {path}"));
        let part = stem.strip_suffix(name).unwrap_or_else(|| panic!("{what}: name {name:?} of {path}"));
        assert!(part.is_empty() || mount.path(part).join("info.json").is_file(), "{what}: {path} named {name:?}");
        for file in [path.to_string(), format!("{stem}.raw")] {
            assert_eq!(xattr(&mount.path(&file), "user.wfs.name").as_deref(), Some(name.as_bytes()), "{what}: user.wfs.name of {file}");
        }
        names.push(name.to_string());
    }
    names
}

/// Every `.expect.json` oracle below `dir` and the source it describes.
fn oracles(dir: &Path, found: &mut Vec<(PathBuf, Value)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            oracles(&path, found);
        } else if let Some(source) = path.to_str().unwrap().strip_suffix(".expect.json") {
            let expect = load_json(&path);
            // Checkpoint oracles beside their directory name the prefix they describe.
            let source = match expect["fixture"].as_str() {
                Some(rel) if rel.contains('/') && !source.ends_with(rel) => path.parent().unwrap().join(rel),
                _ => PathBuf::from(source),
            };
            found.push((source, expect));
        }
    }
}

#[test]
fn every_fixture_names_its_tensors_by_their_tree_paths() {
    let mut found = Vec::new();
    for dir in ["h5", "keras3", "ckpt", "savedmodel", "order"] {
        oracles(&fixture(dir), &mut found);
    }
    assert!(found.len() >= 44, "{} oracles", found.len());
    for (source, expect) in found {
        let what = source.display().to_string();
        let mount = Mount::new(&source, &[]);
        let names = check_rows(&mount, &what);
        // hostile.h5's oracle has raw names; the order oracles name layers, not tensors.
        let Some(tensors) = expect.get("tensors").and_then(Value::as_object) else { continue };
        let named: HashSet<&str> = names.iter().map(String::as_str).collect();
        let missing: Vec<&String> = tensors.keys().filter(|path| !named.contains(path.as_str())).collect();
        assert_eq!(names.len(), tensors.len(), "{what}: one name per tensor");
        // Without config.json a sharded file cannot name four of its variables (and their
        // optimizer slots): they keep their indices (tests/keras3.rs UNNAMEABLE_WITHOUT_CONFIG).
        let unnameable = if what.ends_with("k3_sharded.weights.json") { 12 } else { 0 };
        assert_eq!(missing.len(), unnameable, "{what}: no tensors named {missing:?}");
    }
}

#[test]
fn every_keras_and_tensorflow_real_model_names_its_tensors() {
    let Some(root) = real_models() else { return };
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let Some(item) = file.strip_suffix(".oracle.json") else { continue };
        for part in load_json(&root.join(&file))["parts"].as_array().into_iter().flatten() {
            let tensors = part["tensors"].as_array().unwrap();
            let source = match part["kind"].as_str().unwrap() {
                "hdf5" | "keras-v3-zip" => root.join(item).join(part["path"].as_str().unwrap()),
                "tf-checkpoint" => root.join(item).join(part["prefix"].as_str().unwrap()),
                "tf-savedmodel" => root.join(item),
                _ => continue,
            };
            let what = format!("{item}: {}", source.display());
            let mount = Mount::new(&source, &[]);
            let names = check_rows(&mount, &what);
            if tensors.first().is_some_and(|t| t.get("key").is_some()) {
                // docs/tree.md 6: a bundle key is `variables/<key>` without the VALUE suffix.
                let names: HashSet<&str> = names.iter().map(String::as_str).collect();
                for t in tensors {
                    let key = t["key"].as_str().unwrap();
                    let name = format!("variables/{}", key.strip_suffix("/.ATTRIBUTES/VARIABLE_VALUE").unwrap_or(key));
                    assert!(names.contains(name.as_str()), "{what}: no tensor named {name}");
                }
            } else {
                assert_eq!(names.len(), tensors.len(), "{what}: one name per tensor of the file");
            }
            checked += 1;
        }
    }
    assert!(checked >= 27, "checked {checked} parts");
}
