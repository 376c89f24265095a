//! Deployment formats (OpenVINO IR, TensorFlow.js, Core ML) written by their own tools
//! (tests/fixtures/{openvino,tfjs,coreml}, gen/make_*.py) and by others (real-models), mounted
//! for real: every tensor's stored bytes, shape and dtype against what the runtime's own reader
//! gives, and its `.npy` values against the values the runtime computes (numpy reads the mount).

use crate::common::*;
use serde_json::Value;
use std::path::Path;

/// Mounts fixture `rel` and checks it against `oracle.expect.json` and `oracle.expect.npz`:
/// one `tensors.tsv` row per oracle tensor (found by name: an ML Program's op inputs are a
/// protobuf map, whose order the oracle's reader does not keep), at its path, with its bytes,
/// shape and dtype; the values numpy loads from each `.npy`.
fn check_fixture_with(rel: &str, oracle: &str, format: &str) -> Mount {
    let base = fixture(oracle).display().to_string();
    let expect = load_json(Path::new(&format!("{base}.expect.json")));
    let mount = Mount::new(&fixture(rel), &[]);
    let tensors = expect["tensors"].as_array().unwrap();
    let rows = tsv_rows(&mount);
    assert_eq!(rows.len(), tensors.len(), "{rel}: one row per tensor: {rows:?}");
    for t in tensors {
        let (path, name) = (t["path"].as_str().unwrap(), t["name"].as_str().unwrap());
        let row = rows.iter().find(|r| r[4] == name).unwrap_or_else(|| panic!("{rel}: no row named {name}"));
        assert_eq!(row[0], format!("{path}.npy"), "{rel}");
        check_tensor(&mount, path, t);
    }
    check_with_numpy(&mount, Path::new(&format!("{base}.expect.npz")));
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], format, "{rel}");
    assert_eq!(info["tensors"].as_u64(), Some(tensors.len() as u64), "{rel}");
    mount
}

/// `check_fixture_with` for a fixture whose oracle lies beside it under its own name.
fn check_fixture(rel: &str, format: &str) -> Mount {
    check_fixture_with(rel, rel, format)
}

#[test]
fn openvino_constants_of_every_element_type_match_openvino() {
    let mount = check_fixture("openvino/consts.xml", "openvino");
    let graph: Value = serde_json::from_slice(&mount.read("graph.json")).unwrap();
    let layers = graph["layers"].as_array().unwrap();
    let fc = layers.iter().find(|l| l["name"] == "fc").expect("the MatMul layer");
    assert_eq!(fc["type"], "MatMul");
    assert_eq!(fc["outputs"][0]["shape"], serde_json::json!([1, 4]));
    // Every edge joins two layers of the graph.
    let ids: Vec<&Value> = layers.iter().map(|l| &l["id"]).collect();
    for edge in graph["edges"].as_array().unwrap() {
        assert!(ids.contains(&&edge["from_layer"]) && ids.contains(&&edge["to_layer"]), "{edge}");
    }
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["rt_info"]["wfs"]["note"], "wfs fixture");
    assert_eq!(info["ir_version"], 11);
}

#[test]
fn openvino_fp16_compressed_weights_match_openvino() {
    check_fixture("openvino/compressed_fp16.xml", "openvino");
}

/// Layers models as the converter writes them: float32 in one shard and in 256-byte shards
/// (weights straddle shard files), uint8/uint16/float16-quantized (`.npy` = what
/// `tensorflowjs.read_weights` dequantizes).
#[test]
fn tfjs_weights_match_keras_and_tensorflowjs() {
    for name in ["float", "float_shards", "uint8", "uint16", "float16"] {
        let mount = check_fixture_with(&format!("tfjs/{name}/model.json"), &format!("tfjs/{name}"), "tfjs");
        let config: Value = serde_json::from_slice(&mount.read("config.json")).unwrap();
        assert_eq!(config["class_name"], "Sequential", "{name}");
        let expect = load_json(&fixture(&format!("tfjs/{name}.expect.json")));
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        assert_eq!(info["weight_files"], expect["shards"], "{name}");
    }
}

/// NeuralNetwork `.mlmodel`s (float, float16, 8-bit linear, 4-bit lookup table) and ML Program
/// packages (float32, float16 blobs; 4-bit palettized: uint4 indices and their table), against
/// coremltools' own readers.
#[test]
fn coreml_weights_match_coremltools() {
    for name in ["float.mlmodel", "fp16.mlmodel", "linear8.mlmodel", "lut4.mlmodel", "program_fp32.mlpackage", "program_fp16.mlpackage", "palettized4.mlpackage"] {
        let mount = check_fixture(&format!("coreml/{name}"), "coreml");
        let graph: Value = serde_json::from_slice(&mount.read("graph.json")).unwrap();
        let quantized = graph["layers"].as_array().into_iter().flatten().flat_map(|l| l["weights"].as_array().unwrap()).filter(|w| w.get("quantization").is_some()).count();
        assert_eq!(quantized > 0, name.starts_with("l"), "{name}: quantization parameters in graph.json");
    }
}

/// Each real-models item of the deployment formats: every tensor of its oracle, by name, with
/// its bytes, shape and dtype, and no other tensor.
#[test]
fn real_deployment_models_match_their_oracles() {
    let Some(root) = real_models() else { return };
    let mut checked = 0;
    for (item, oracle) in real_items(&root) {
        if !["openvino_", "tfjs_", "coreml_"].iter().any(|p| item.starts_with(p)) || real_item_refused(&item) {
            continue;
        }
        for part in oracle["parts"].as_array().unwrap() {
            let mount = Mount::new(&root.join(&item).join(part["path"].as_str().unwrap()), &[]);
            check_part_tensors(&mount, &item, part);
            checked += 1;
        }
    }
    eprintln!("checked {checked} real deployment models");
}

/// Copies fixture directory or file `rel` into a fresh temporary directory, for damaging.
fn copy_fixture(rel: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp").arg("-r").arg(fixture(rel)).arg(dir.path()).status().unwrap();
    assert!(status.success());
    dir
}

/// A refusal: one line on stderr, starting `wfs: `, naming `why`.
fn assert_refused(source: &Path, why: &str) {
    let out = Mount::try_new(source, &[]).err().unwrap_or_else(|| panic!("{} must not mount", source.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("wfs: ") && stderr.contains(why), "{stderr}");
}

fn skipped(mount: &Mount) -> Vec<Value> {
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    info["skipped"].as_array().cloned().unwrap_or_default()
}

#[test]
fn openvino_damage_is_reported_or_refused() {
    let dir = copy_fixture("openvino/consts.xml");
    std::fs::copy(fixture("openvino/consts.bin"), dir.path().join("consts.bin")).unwrap();
    let xml = dir.path().join("consts.xml");
    // A Const whose bytes lie past the .bin and one whose size does not fit its shape are left
    // out with why; the rest mounts.
    let text = std::fs::read_to_string(&xml).unwrap();
    let text = text.replacen("offset=\"176\" size=\"48\"", "offset=\"4000000000\" size=\"48\"", 1).replacen("size=\"12\"", "size=\"13\"", 1);
    std::fs::write(&xml, text).unwrap();
    let mount = Mount::new(&xml, &[]);
    let skipped = skipped(&mount);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().any(|s| s["reason"].as_str().unwrap().contains("past the end")), "{skipped:?}");
    assert!(skipped.iter().any(|s| s["reason"].as_str().unwrap().contains("size 13")), "{skipped:?}");
    drop(mount);
    // Without its .bin the IR is refused in one line; so is XML that breaks off.
    std::fs::remove_file(dir.path().join("consts.bin")).unwrap();
    assert_refused(&xml, "consts.bin");
    let cut = dir.path().join("cut.xml");
    std::fs::write(&cut, &std::fs::read(fixture("openvino/consts.xml")).unwrap()[..5000]).unwrap();
    assert_refused(&cut, "OpenVINO IR is damaged");
}

#[test]
fn tfjs_shards_that_do_not_fit_the_manifest() {
    let dir = copy_fixture("tfjs/float_shards");
    let model = dir.path().join("float_shards/model.json");
    // A last shard cut short: the weights it no longer holds are left out with why.
    let last = dir.path().join("float_shards/group1-shard4of4.bin");
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() - 8]).unwrap();
    let mount = Mount::new(&model, &[]);
    let skipped = skipped(&mount);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("past the end of its group"), "{skipped:?}");
    drop(mount);
    // Bytes past the last weight are reported.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 5]);
    std::fs::write(&last, &longer).unwrap();
    let mount = Mount::new(&model, &[]);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["unused_bytes"]["0"], 5);
    drop(mount);
    // A missing shard refuses the model.
    std::fs::remove_file(&last).unwrap();
    assert_refused(&model, "group1-shard4of4.bin");
}

#[test]
fn coreml_damage_is_reported_or_refused() {
    // A protobuf cut inside a layer's weights: refused in one line.
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.mlmodel");
    let bytes = std::fs::read(fixture("coreml/float.mlmodel")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    assert_refused(&cut, "Core ML model is damaged");
    // A blob header whose sentinel is wrong: that constant is left out with why.
    let dir = copy_fixture("coreml/program_fp32.mlpackage");
    let bin = dir.path().join("program_fp32.mlpackage/Data/com.apple.CoreML/weights/weight.bin");
    let mut blob = std::fs::read(&bin).unwrap();
    blob[64] ^= 0xff;
    std::fs::write(&bin, blob).unwrap();
    let mount = Mount::new(&dir.path().join("program_fp32.mlpackage"), &[]);
    let skipped = skipped(&mount);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("sentinel"), "{skipped:?}");
}
