//! TensorFlow Lite models written by TF's TFLiteConverter (tests/fixtures/tflite,
//! gen/make_tflite.py) and by others (real-models), mounted for real and compared with what
//! TensorFlow itself reads: `Interpreter.get_tensor` bytes, names, shapes, quantization
//! parameters, and the graph as TF's generated FlatBuffers code reads it.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// JSON equality with floats compared as float32 (the file stores scales as float32; TF's
/// Python reader widens them to float64).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => x.as_f64().map(|v| v as f32) == y.as_f64().map(|v| v as f32),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        _ => a == b,
    }
}

/// The quantization xattrs of a tensor file as the oracle's JSON.
fn quant_xattrs(path: &Path) -> Value {
    let numbers = |name: &str| -> Vec<Value> {
        xattr_text(path, name).split(',').filter(|s| !s.is_empty()).map(|s| serde_json::from_str(s).unwrap()).collect()
    };
    serde_json::json!({
        "scale": numbers("user.wfs.quant.scale").iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>(),
        "zero_point": numbers("user.wfs.quant.zero_point"),
        "quantized_dimension": xattr_text(path, "user.wfs.quant.quantized_dimension").parse::<i64>().unwrap(),
    })
}

fn check_fixture(name: &str) -> Mount {
    let base = fixture(&format!("tflite/{name}")).display().to_string();
    let expect = load_json(Path::new(&format!("{base}.expect.json")));
    let mount = Mount::new(Path::new(&base), &[]);
    let tensors = expect["tensors"].as_array().unwrap();
    let rows = tsv_rows(&mount);
    assert_eq!(rows.len(), tensors.len(), "{name}: one row per tensor with data");
    for (t, row) in tensors.iter().zip(&rows) {
        let path = t["path"].as_str().unwrap();
        check_tensor(&mount, path, t);
        assert_eq!(row[0], format!("{path}.npy"));
        assert_eq!(row[4], t["name"].as_str().unwrap());
        let raw = mount.path(&format!("{path}.raw"));
        assert_eq!(xattr_text(&raw, "user.wfs.name"), t["name"].as_str().unwrap());
        let storage = if t["dtype"] == "string" { "decoded" } else { "plain" };
        assert_eq!(xattr_text(&raw, "user.wfs.storage"), storage, "{path} is served in place");
        match t.get("quantization") {
            Some(q) => assert!(same(&quant_xattrs(&mount.path(&format!("{path}.npy"))), q), "{name}: quantization of {path}"),
            None => assert!(!Command::new("getfattr").args(["-n", "user.wfs.quant.scale"]).arg(&raw).output().unwrap().status.success()),
        }
    }
    check_with_numpy(&mount, Path::new(&format!("{base}.expect.npz")));
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], "tflite");
    for (key, value) in expect["info"].as_object().unwrap() {
        assert_eq!(&info[key], value, "{name}: info.json {key}");
    }
    let graph: Value = serde_json::from_slice(&mount.read("graph.json")).unwrap();
    assert!(same(&graph, &expect["graph"]), "{name}: graph.json\n{graph:#}\nexpected\n{:#}", expect["graph"]);
    mount
}

#[test]
fn float_model() {
    let mount = check_fixture("float.tflite");
    // Weights in TFLite layout: the conv kernel OHWI, the dense kernel [out, in].
    assert_eq!(mount.text("tensors/tiny_1/conv_1/convolution.shape"), "3,3,3,2\n");
    let graph: Value = serde_json::from_slice(&mount.read("graph.json")).unwrap();
    let ops: Vec<&str> = graph["subgraphs"][0]["ops"].as_array().unwrap().iter().map(|o| o["op_type"].as_str().unwrap()).collect();
    assert!(ops.contains(&"CONV_2D") && ops.contains(&"FULLY_CONNECTED"), "{ops:?}");
}

#[test]
fn full_integer_int8_model_with_per_channel_scales() {
    let mount = check_fixture("int8.tflite");
    let kernel = mount.path("tensors/tiny_1/conv_1/convolution.raw");
    assert_eq!(xattr_text(&kernel, "user.wfs.quant.scale").split(',').count(), 3, "one scale per output channel");
    assert_eq!(xattr_text(&kernel, "user.wfs.quant.zero_point"), "0,0,0");
    assert_eq!(mount.text("tensors/tiny_1/conv_1/convolution.dtype"), "int8\n");
}

#[test]
fn float16_weights() {
    let mount = check_fixture("float16.tflite");
    assert_eq!(mount.text("tensors/tiny_1/fc_1/MatMul1.dtype"), "float16\n");
}

#[test]
fn buffers_outside_the_flatbuffer() {
    let mount = check_fixture("buffer_offset.tflite");
    // The >2 GiB form: data after the FlatBuffer, served from where Buffer.offset says.
    let raw = mount.path("tensors/tiny_1/conv_1/convolution.raw");
    let offset: usize = xattr_text(&raw, "user.wfs.offset").parse().unwrap();
    let file = std::fs::read(fixture("tflite/buffer_offset.tflite")).unwrap();
    let bytes = mount.read("tensors/tiny_1/conv_1/convolution.raw");
    assert_eq!(file[offset..offset + bytes.len()], bytes);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["metadata"]["buffer_location"], "outside flatbuffers");
}

#[test]
fn int64_int16_and_bool_constants() {
    check_fixture("constants.tflite");
}

#[test]
fn old_schema_operator_codes_and_string_constants() {
    let mount = check_fixture("old_schema.tflite");
    assert_eq!(mount.text("tensors/vocab/words.dtype"), "string\n");
    // Fixed width 9, the longest element: "alpha" padded, "" all NULs, "gamma ray".
    assert_eq!(mount.read("tensors/vocab/words.raw"), [&b"alpha\0\0\0\0"[..], &[0; 9], b"gamma ray"].concat());
}

/// Tensors without a name (the field is optional; TFLite Micro's models leave it out) sit at
/// their index with an empty name column, and graph.json refers to them by that index.
#[test]
fn unnamed_tensors_are_placed_by_index() {
    let mount = check_fixture("unnamed.tflite");
    let listed: Vec<String> = std::fs::read_dir(mount.path("tensors")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(listed.iter().all(|n| n.split('.').next().unwrap().parse::<usize>().is_ok()), "{listed:?}");
    assert_eq!(listed.len(), 6 * 4, "{listed:?}");
    // model.safetensors keys them by path: its header is a u64 length and a JSON object.
    let file = mount.read("model.safetensors");
    let len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&file[8..8 + len]).unwrap();
    let mut keys: Vec<&String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").collect();
    keys.sort();
    assert_eq!(keys, (1..=6).map(|i| format!("tensors/{i}")).collect::<Vec<_>>().iter().collect::<Vec<_>>());
}

/// The real TFLite files of ../shared/real-models against their oracles.
#[test]
fn real_models_match_their_oracles() {
    let Some(dir) = real_models() else { return };
    for item in ["tfl_int8_full_integer", "tfl_sine_float"] {
        let oracle = load_json(&dir.join(format!("{item}.oracle.json")));
        let part = &oracle["parts"][0];
        let mount = Mount::new(&dir.join(item).join(part["path"].as_str().unwrap()), &[]);
        let rows = check_part_tensors(&mount, item, part);
        for (t, row) in part["tensors"].as_array().unwrap().iter().zip(&rows) {
            assert_eq!(row[4], t["name"].as_str().unwrap(), "{item}: order and names");
            let path = row[0].strip_suffix(".npy").unwrap();
            if let Some(q) = t.get("quantization") {
                assert!(same(&quant_xattrs(&mount.path(&format!("{path}.raw"))), q), "{item}: quantization of {path}");
            }
        }
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        let meta = &part["metadata"];
        for key in ["version", "description", "subgraphs", "signature_defs"] {
            assert_eq!(info[key], meta[key], "{item}: info.json {key}");
        }
        for (key, value) in meta["metadata"].as_object().unwrap() {
            match value {
                Value::String(_) => assert_eq!(&info["metadata"][key], value, "{item}: metadata {key}"),
                _ => assert_eq!(info["metadata"][key]["bytes"], value["bytes"], "{item}: metadata {key}"),
            }
        }
    }
}

/// Damaged FlatBuffers: each fails in one line, or mounts what is intact; never a panic, hang
/// or stale mount.
#[test]
fn damaged_flatbuffers_fail_in_one_line() {
    let good = std::fs::read(fixture("tflite/float.tflite")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [8, 64, good.len() / 2, good.len() - 1] {
        cases.push((format!("cut at {cut}"), good[..cut].to_vec()));
    }
    // Root offset past the end, and pointing at itself.
    let mut far = good.clone();
    far[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    cases.push(("root past the end".into(), far));
    let mut zero = good.clone();
    zero[..4].copy_from_slice(&0u32.to_le_bytes());
    cases.push(("root at 0".into(), zero));
    // Every 4-byte word in turn set to a huge value: offsets and counts out of range.
    for at in (8..good.len().min(1024)).step_by(4) {
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        cases.push((format!("word at {at}"), bad));
    }
    let path = dir.path().join("bad.tflite");
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let out = wfs().arg("ls").arg(&path).arg("-R").output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        if out.status.success() {
            assert!(stderr.is_empty(), "{what}: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(4), "{what}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        }
    }
}
