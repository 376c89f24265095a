//! TensorFlow checkpoints written by real TensorFlow (tests/fixtures/ckpt, real-models), mounted
//! for real; damaged copies must fail cleanly or fail only the damaged tensor.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Mounts `<dir>/<prefix>` and checks it against `<dir>.<prefix>.expect.{json,npz}`.
fn check_fixture(dir: &str, prefix: &str) -> Mount {
    let mount = Mount::new(&fixture(&format!("ckpt/{dir}/{prefix}")), &[]);
    let expect = load_json(&fixture(&format!("ckpt/{dir}.{prefix}.expect.json")));
    assert_eq!(expect["fixture"], format!("{dir}/{prefix}"));
    check_expect(&mount, &expect);
    check_with_numpy(&mount, &fixture(&format!("ckpt/{dir}.{prefix}.expect.npz")));
    mount
}

/// Checks an oracle's tensors below `sub/` of a mount (bytes, shape, dtype).
fn check_tensors_under(mount: &Mount, sub: &str, expect: &Value) {
    for (path, t) in expect["tensors"].as_object().unwrap() {
        check_tensor(mount, &format!("{sub}/{path}"), t);
    }
}

fn info(mount: &Mount, rel: &str) -> Value {
    serde_json::from_slice(&mount.read(rel)).unwrap()
}

#[test]
fn tf1_saver_with_partitioned_variable() {
    let mount = check_fixture("tf1_saver", "model.ckpt-5");
    let info = info(&mount, "info.json");
    assert_eq!(info["format"], "tf-checkpoint");
    assert_eq!(info["checkpoint_format"], "tf1-name-based");
    assert!(!mount.path("object_graph.json").exists());
}

#[test]
fn tf2_every_dtype() {
    let mount = check_fixture("tf2_dtypes", "dtypes");
    assert_eq!(info(&mount, "info.json")["checkpoint_format"], "tf2-object-based");
    assert_eq!(mount.text("variables/store/v_string.dtype"), "string\n");
}

#[test]
fn tf2_sharded_and_sliced() {
    let mount = check_fixture("sharded", "ckpt-1");
    assert_eq!(info(&mount, "info.json")["shards"], 4);
}

#[test]
fn tf2_keras_object_graph_and_layers() {
    for prefix in ["ckpt-1", "ckpt-2"] {
        let mount = check_fixture("tf2_keras", prefix);
        let graph = info(&mount, "object_graph.json");
        let nodes = graph["nodes"].as_array().unwrap();
        assert_eq!(nodes[0]["index"], 0);
        let keys: Vec<&str> = nodes
            .iter()
            .flat_map(|n| n["attributes"].as_array().unwrap())
            .map(|a| a["checkpoint_key"].as_str().unwrap())
            .collect();
        assert!(keys.contains(&"model/layer_with_weights-1/kernel/.ATTRIBUTES/VARIABLE_VALUE"));
        // Optimizer state is not part of the Keras view.
        assert!(!mount.path("layers/Adam").exists());
        let layers: Vec<String> =
            std::fs::read_dir(mount.path("layers")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(layers.len(), 4, "{layers:?}");
    }
}

#[test]
fn prefix_index_file_and_single_checkpoint_directory_mount_alike() {
    let expect = load_json(&fixture("ckpt/tf1_saver.model.ckpt-5.expect.json"));
    for source in ["ckpt/tf1_saver/model.ckpt-5.index", "ckpt/tf1_saver"] {
        let mount = Mount::new(&fixture(source), &[]);
        check_expect(&mount, &expect);
    }
}

#[test]
fn directory_of_checkpoints() {
    let mount = Mount::new(&fixture("ckpt/tf2_keras"), &[]);
    let top = info(&mount, "info.json");
    assert_eq!(top["checkpoints"], serde_json::json!(["ckpt-1", "ckpt-2"]));
    for prefix in ["ckpt-1", "ckpt-2"] {
        let expect = load_json(&fixture(&format!("ckpt/tf2_keras.{prefix}.expect.json")));
        check_tensors_under(&mount, prefix, &expect);
        let own = info(&mount, &format!("{prefix}/info.json"));
        assert_eq!(own["checkpoint_format"], "tf2-object-based");
        assert_eq!(own["tensors"], 40);
        assert!(mount.path(&format!("{prefix}/object_graph.json")).is_file());
        // Each checkpoint's own tensor table is what mounting that checkpoint alone shows.
        let alone = Mount::new(&fixture(&format!("ckpt/tf2_keras/{prefix}")), &[]);
        assert_eq!(mount.read(&format!("{prefix}/tensors.tsv")), alone.read("tensors.tsv"));
        if expect["latest_in_dir"] == prefix {
            assert_eq!(std::fs::read_link(mount.path("latest")).unwrap(), Path::new(prefix));
            check_tensors_under(&mount, "latest", &expect);
        }
    }
}

/// A copy of a fixture checkpoint directory, to damage.
fn copy_of(dir: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(&format!("ckpt/{dir}"))).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn assert_mount_fails(source: &Path, needle: &str) {
    let out = Mount::try_new(source, &[]).err().expect("mount of a damaged checkpoint succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("wfs: ") && stderr.contains(needle), "{stderr}");
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn missing_data_file_fails_the_mount() {
    let tmp = copy_of("sharded");
    std::fs::remove_file(tmp.path().join("ckpt-1.data-00002-of-00004")).unwrap();
    assert_mount_fails(&tmp.path().join("ckpt-1"), "ckpt-1.data-00002-of-00004");
}

#[test]
fn truncated_data_file_fails_the_mount() {
    let tmp = copy_of("tf2_keras");
    edit(&tmp.path().join("ckpt-1.data-00000-of-00001"), |b| b.truncate(b.len() - 100));
    assert_mount_fails(&tmp.path().join("ckpt-1"), "outside its data file");
}

#[test]
fn damaged_index_fails_the_mount() {
    let tmp = copy_of("tf2_keras");
    edit(&tmp.path().join("ckpt-1.index"), |b| b[200] ^= 0x10);
    assert_mount_fails(&tmp.path().join("ckpt-1"), "checksum");
    edit(&tmp.path().join("ckpt-2.index"), |b| b.truncate(b.len() - 3));
    assert_mount_fails(&tmp.path().join("ckpt-2.index"), "");
}

#[test]
fn every_flipped_or_truncated_index_byte_is_an_error_or_harmless() {
    let tmp = copy_of("tf1_saver");
    let index = tmp.path().join("model.ckpt-5.index");
    let good = std::fs::read(&index).unwrap();
    let options = wfs::formats::ReadOptions { cache: std::sync::Arc::new(wfs::cache::ChunkCache::new(1 << 20)) };
    let prefix = tmp.path().join("model.ckpt-5");
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0xff;
        std::fs::write(&index, &bad).unwrap();
        let _ = wfs::formats::open(wfs::formats::Source::Path(&prefix), &options);
        std::fs::write(&index, &good[..i]).unwrap();
        assert!(wfs::formats::open(wfs::formats::Source::Path(&prefix), &options).is_err(), "index cut at {i} accepted");
    }
}

#[test]
fn flipped_data_byte_fails_only_that_tensor() {
    let tmp = copy_of("tf2_keras");
    let victim = "variables/model/layer_with_weights-0/cell/kernel.raw";
    let original = Mount::new(&tmp.path().join("ckpt-1"), &[]).read(victim);
    let data = tmp.path().join("ckpt-1.data-00000-of-00001");
    edit(&data, |b| {
        let at = b.windows(original.len()).position(|w| w == original.as_slice()).unwrap();
        b[at + 5] ^= 0x01;
    });
    let mount = Mount::new(&tmp.path().join("ckpt-1"), &[]);
    // Even a read of a few bytes of the .npy fails: the whole tensor is checked on first touch.
    let npy = std::fs::File::open(mount.path(&victim.replace(".raw", ".npy"))).unwrap();
    let mut head = [0u8; 8];
    let err = std::os::unix::fs::FileExt::read_exact_at(&npy, &mut head, 200).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let err = std::fs::read(mount.path(victim)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // The layers/ view shares the bytes, and so the check.
    assert!(std::fs::read(mount.path("layers/lstm/lstm_cell/kernel.raw")).is_err());
    let expect = load_json(&fixture("ckpt/tf2_keras.ckpt-1.expect.json"));
    let bias = &expect["tensors"]["variables/model/layer_with_weights-1/bias"]["sha256"];
    assert_eq!(sha256_hex(&mount.read("variables/model/layer_with_weights-1/bias.raw")), bias.as_str().unwrap());
}

#[test]
fn flipped_string_byte_fails_only_that_tensor() {
    let tmp = copy_of("tf2_dtypes");
    let mount = Mount::new(&tmp.path().join("dtypes"), &[]);
    let original = mount.read("variables/store/v_string.raw");
    drop(mount);
    // The longest element is stored unpadded in the data file.
    let longest = original.chunks(original.len() / 3).max_by_key(|c| c.iter().filter(|&&b| b != 0).count()).unwrap();
    let longest: Vec<u8> = longest.iter().copied().filter(|&b| b != 0).collect();
    edit(&tmp.path().join("dtypes.data-00000-of-00001"), |b| {
        let at = b.windows(longest.len()).position(|w| w == longest.as_slice()).unwrap();
        b[at] ^= 0x01;
    });
    let mount = Mount::new(&tmp.path().join("dtypes"), &[]);
    assert!(std::fs::read(mount.path("variables/store/v_string.raw")).is_err());
    assert_eq!(mount.read("variables/store/v_bool.raw").len(), 5);
}

/// The real-world checkpoints: every tensor of every part through `variables/`.
fn check_real_item(item: &str) -> usize {
    let Some(root) = real_models() else { return 0 };
    let oracle = load_json(&root.join(format!("{item}.oracle.json")));
    let mut checked = 0;
    for part in oracle["parts"].as_array().unwrap() {
        let prefix = part.get("prefix").or_else(|| part.get("variables_prefix")).and_then(Value::as_str).unwrap();
        let source: PathBuf = root.join(item).join(prefix);
        let mount = Mount::new(&source, &[]);
        for t in part["tensors"].as_array().unwrap() {
            let key = t["key"].as_str().unwrap();
            check_tensor(&mount, &format!("variables/{}", key.strip_suffix("/.ATTRIBUTES/VARIABLE_VALUE").unwrap_or(key)), t);
            checked += 1;
        }
        let kind = if part["format"].as_str().unwrap_or_default().starts_with("tf1") { "tf1-name-based" } else { "tf2-object-based" };
        assert_eq!(info(&mount, "info.json")["checkpoint_format"], kind, "{item}/{prefix}");
    }
    checked
}

#[test]
fn real_tf2_checkpoints() {
    for item in ["ckpt_a2c_suspension", "ckpt_td3_compensator"] {
        let checked = check_real_item(item);
        let Some(root) = real_models() else { return };
        assert!(checked > 0);
        // The directory mounts every checkpoint, `latest` pointing at the state file's choice.
        let mount = Mount::new(&root.join(item), &[]);
        assert!(mount.path("latest/variables").is_dir(), "{item}: latest");
    }
}

#[test]
fn real_tf1_checkpoints() {
    check_real_item("tf1_houseprices");
    if let Some(root) = real_models() {
        let mount = Mount::new(&root.join("tf1_houseprices"), &[]);
        assert_eq!(std::fs::read_link(mount.path("latest")).unwrap(), Path::new("model.ckpt"));
    }
}

#[test]
fn real_savedmodel_variables_bundle() {
    check_real_item("bad/bad_savedmodel_crlf_pb");
}
