//! Real model files written by other people (../shared/real-models): every item mounts unless
//! its format is listed as not read yet (then, and for the broken items, it fails with one
//! clear line); every Keras HDF5 item's tensors match its oracle.

mod common;
use common::*;
use serde_json::Value;
use std::collections::HashMap;

/// Drops TensorFlow's `:0` output suffix.
fn strip_index(name: &str) -> &str {
    name.strip_suffix(":0").unwrap_or(name)
}

/// Every tensor the mount lists, by `.npy` path relative to the mount.
fn listed(mount: &Mount) -> Vec<(String, String, String)> {
    mount
        .text("tensors.tsv")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].trim_end_matches(".npy").to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

fn check_hdf5_item(item: &str, part: &Value, root: &std::path::Path) {
    let source = root.join(item).join(part["path"].as_str().unwrap());
    let mount = Mount::new(&source, &[]);
    let mut available = listed(&mount);
    let layer_names: Vec<&str> = part["model_weights_layer_names"]
        .as_array()
        .or_else(|| part["root_layer_names"].as_array())
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let tensors = part["tensors"].as_array().unwrap();
    for t in tensors {
        let path = t["path"].as_str().unwrap();
        let shape: Vec<String> = t["shape"].as_array().unwrap().iter().map(|d| d.to_string()).collect();
        let shape = shape.join(",");
        let dtype = t["dtype"].as_str().unwrap();
        let parts: Vec<&str> = path.split('/').collect();
        // Where the tensor must appear: optimizer weights by their name, layer weights below
        // their layer's directory, under a file named after the weight's leaf name.
        let (dir, leaf) = if parts[0] == "optimizer_weights" {
            let rest = strip_index(&path["optimizer_weights/".len()..]).to_string();
            let (d, l) = rest.rsplit_once('/').map_or((String::new(), rest.clone()), |(d, l)| (d.to_string(), l.to_string()));
            (format!("optimizer/{d}").trim_end_matches('/').to_string(), l)
        } else {
            let layer_at = if parts[0] == "model_weights" { 1 } else { 0 };
            let layer = parts[layer_at];
            assert!(layer_names.contains(&layer), "{item}: {path} is not under a listed layer");
            let leaf = strip_index(parts[parts.len() - 1]);
            let leaf = leaf.strip_prefix(&format!("{layer}_")).unwrap_or(leaf).to_string();
            (format!("layers/{layer}"), leaf)
        };
        let found = available.iter().position(|(p, d, s)| {
            p.starts_with(&format!("{dir}/"))
                && p.rsplit('/').next() == Some(leaf.as_str())
                && d == dtype
                && *s == shape
                && sha256_hex(&mount.read(&format!("{p}.raw"))) == t["sha256"].as_str().unwrap()
        });
        let Some(index) = found else {
            panic!("{item}: no tensor {dir}/**/{leaf} ({dtype} [{shape}]) matching {path}");
        };
        available.remove(index);
    }
    assert!(available.is_empty(), "{item}: tensors not in the oracle: {available:?}");
    for (i, name) in layer_names.iter().enumerate() {
        assert_eq!(std::fs::read_link(mount.path(&format!("layers/{i}"))).unwrap().to_str().unwrap(), *name);
        assert!(mount.path(&format!("layers/{name}")).is_dir());
    }
    if part["model_config_present"].as_bool() == Some(true) {
        let config: Value = serde_json::from_slice(&mount.read("config.json")).unwrap();
        assert_eq!(config["class_name"].as_str(), part["model_class"].as_str(), "{item}: config.json");
    }
}

#[test]
fn every_keras_hdf5_item_matches_its_oracle() {
    let Some(root) = real_models() else { return };
    let mut checked = HashMap::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(item) = name.strip_suffix(".oracle.json") else { continue };
        let oracle = load_json(&root.join(&name));
        for part in oracle["parts"].as_array().into_iter().flatten() {
            let legacy = part["kind"] == "hdf5" && !part["format"].as_str().unwrap_or("").contains("keras3");
            if legacy {
                check_hdf5_item(item, part, &root);
                *checked.entry(item.to_string()).or_insert(0) += part["tensors"].as_array().unwrap().len();
            }
        }
    }
    eprintln!("checked {} items, {} tensors", checked.len(), checked.values().sum::<usize>());
    assert!(checked.len() >= 14, "expected every legacy HDF5 item, got {checked:?}");
}

#[test]
fn git_lfs_pointer_fails_with_one_line() {
    let Some(root) = real_models() else { return };
    let source = root.join("bad/bad_lfs_pointer_h5/gru_model.h5");
    let err = Mount::try_new(&source, &[]).err().expect("must not mount");
    assert_eq!(err.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("wfs: ") && stderr.contains("Git LFS pointer"), "{stderr}");
}

/// Every source of every item mounts, with at least the tensors of its oracle's largest part,
/// unless the item is listed as refused (common::NOT_YET_READ, the bad/ items): then it fails
/// in one line with exit 4. A listed item that mounts fails too, so the list shrinks as formats
/// land; an item in neither state (new to the corpus) must be classified.
#[test]
fn every_item_mounts_unless_listed_as_refused() {
    let Some(root) = real_models() else { return };
    let items = real_items(&root);
    let mut wrong = Vec::new();
    for (item, oracle) in &items {
        let most = oracle["parts"].as_array().into_iter().flatten().map(|p| p["tensors"].as_array().map_or(0, Vec::len)).max().unwrap_or(0);
        let mut sources = real_item_sources(item, oracle);
        if sources.is_empty() {
            sources.push(item.clone());
        }
        for source in sources {
            match (Mount::try_new(&root.join(&source), &[]), real_item_refused(item)) {
                (Ok(mount), false) => {
                    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
                    let tensors = info["tensors"].as_u64().unwrap() as usize;
                    if tensors < most {
                        wrong.push(format!("{source}: {tensors} tensors, its oracle has {most}"));
                    }
                }
                (Ok(_), true) => wrong.push(format!("{source} now mounts: take {item} off the refused lists in tests/common and check it against its oracle")),
                (Err(out), refused) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    if !refused {
                        wrong.push(format!("{source} stopped mounting: {}", stderr.trim_end()));
                    } else if out.status.code() != Some(4) || stderr.lines().count() != 1 || !stderr.starts_with("wfs: ") {
                        wrong.push(format!("{source} is not refused in one line with exit 4: {:?} {stderr:?}", out.status.code()));
                    }
                }
            }
        }
    }
    for listed in NOT_YET_READ.iter().chain(BAD_BUT_MOUNTS) {
        if !items.iter().any(|(item, _)| item == listed) {
            wrong.push(format!("{listed} is listed in tests/common but is not in the corpus"));
        }
    }
    assert!(wrong.is_empty(), "real-models items:\n{}", wrong.join("\n"));
}
