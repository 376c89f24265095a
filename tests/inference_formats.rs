//! Caffe, Darknet, ncnn, MXNet and legacy GGML: the real files of ../shared/real-models against
//! their oracles, fixtures written byte by byte by tests/fixtures/gen/make_inference_formats.py
//! against the values it wrote, and hostile variants refused in one line.

use crate::common::*;
use serde_json::Value;

/// Every tensor of a real item's oracle part, by its own name: dtype, shape, bytes.
fn check_real(item: &str) -> (Mount, Value) {
    let root = real_models().expect("../shared/real-models");
    let oracle = load_json(&root.join(format!("{item}.oracle.json")));
    let part = oracle["parts"][0].clone();
    let mount = Mount::new(&root.join(item).join(part["path"].as_str().unwrap()), &[]);
    check_part_tensors(&mount, item, &part);
    (mount, part)
}

#[test]
fn mxnet_real_file_matches_its_oracle() {
    if real_models().is_none() {
        return;
    }
    let (mount, part) = check_real("mxnet_retinaface_mnet");
    let graph: Value = serde_json::from_slice(&mount.read("graph.json")).unwrap();
    assert_eq!(graph["nodes"].as_array().unwrap().len() as u64, part["metadata"]["symbol"]["nodes"].as_u64().unwrap());
}

#[test]
fn ncnn_real_files_match_their_oracles() {
    if real_models().is_none() {
        return;
    }
    for item in ["ncnn_ultraface_rfb320", "ncnn_ultraface_slim320"] {
        let (mount, part) = check_real(item);
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        for key in ["layer_count", "blob_count", "layer_types"] {
            assert_eq!(info[key], part["metadata"][key], "{item}: {key}");
        }
        let graph: Value = serde_json::from_slice(&mount.read("graph.json")).unwrap();
        assert_eq!(graph["layers"].as_array().unwrap().len() as u64, part["metadata"]["layer_count"].as_u64().unwrap());
    }
}

#[test]
fn caffe_real_files_match_their_oracles() {
    if real_models().is_none() {
        return;
    }
    for item in ["caffe_ultraface_rfb320", "caffe_retinaface_tengine"] {
        let (mount, part) = check_real(item);
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        for key in ["name", "layers", "layer_types"] {
            assert_eq!(info[key], part["metadata"][key], "{item}: {key}");
        }
        let prototxt = real_models().unwrap().join(item).join(part["prototxt"].as_str().unwrap());
        assert_eq!(mount.read("model.prototxt"), std::fs::read(prototxt).unwrap(), "{item}");
    }
}

#[test]
fn darknet_real_file_matches_its_oracle() {
    if real_models().is_none() {
        return;
    }
    let (mount, part) = check_real("darknet_yolofastest11_coco");
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["header"], part["metadata"]["header"]);
    assert_eq!(info["cfg_sections"], part["metadata"]["cfg_sections"]);
    // Every array where the oracle found it: the layers were walked in darknet's order.
    for t in part["tensors"].as_array().unwrap() {
        let path = format!("tensors/{}.raw", t["name"].as_str().unwrap());
        assert_eq!(std::fs::metadata(mount.path(&path)).unwrap().len(), t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product::<u64>() * 4);
    }
}

#[test]
fn legacy_ggml_real_files_match_their_oracles() {
    let Some(root) = real_models() else { return };
    for item in ["ggmf_rwkvcpp_tiny4v0_fp16", "ggmf_rwkvcpp_tiny7v0_fp32", "ggmf_llamacpp_vocab_2023-03-22", "ggjt_llamacpp_vocab_aquila_2023-08", "ggml_whispercpp_fortests_tiny"] {
        let oracle = load_json(&root.join(format!("{item}.oracle.json")));
        let part = &oracle["parts"][0];
        let mount = Mount::new(&root.join(item).join(part["path"].as_str().unwrap()), &[]);
        let metadata: Value = serde_json::from_slice(&mount.read("metadata.json")).unwrap();
        let expected = &part["metadata"];
        assert_eq!(metadata["magic"], expected["magic"], "{item}");
        assert_eq!(metadata["version"], expected["version"], "{item}");
        assert_eq!(metadata["hparams"], expected["hparams"], "{item}");
        assert_eq!(metadata["family"], part["family"], "{item}");
        if let Some(vocab) = expected.get("vocab") {
            let tokens = metadata["vocab"]["tokens"].as_array().unwrap();
            assert_eq!(tokens.len() as u64, vocab["n_vocab"].as_u64().unwrap(), "{item}");
            assert_eq!(Value::Array(tokens[..5].to_vec()), vocab["first"], "{item}");
            assert_eq!(metadata["vocab"]["scores"].is_array(), vocab["with_scores"].as_bool().unwrap_or(false), "{item}");
        }
        if let Some(mel) = expected.get("mel_filters") {
            // whisper's mel filters are a tensor as well; the oracle lists no weight tensors.
            check_tensor(&mount, "tensors/mel_filters", mel);
        } else {
            check_part_tensors(&mount, item, part);
        }
    }
}

/// The generated fixtures: every tensor's bytes, shape and dtype against the generator's
/// oracle, and every `.npy` through numpy against the values the generator encoded.
#[test]
fn generated_fixtures_match_their_oracles() {
    for name in [
        "mx-0000.params",
        "nc.param",
        "cf.caffemodel",
        "dn.weights",
        "darknet-alone/old.weights",
        "llama-ggjt-v3.bin",
        "llama-ggmf-v1.bin",
        "whisper-ggml.bin",
        "rwkv-ggmf-v101.bin",
    ] {
        let source = fixture(&format!("inference/{name}"));
        let expect = load_json(&fixture(&format!("inference/{name}.expect.json")));
        let mount = Mount::new(&source, &[]);
        let rows = tsv_rows(&mount);
        for (path, t) in expect["tensors"].as_object().unwrap() {
            check_tensor(&mount, path, t);
            let row = rows.iter().find(|r| r[0] == format!("{path}.npy")).unwrap_or_else(|| panic!("{name}: no row for {path}"));
            assert_eq!(row[4], t["name"].as_str().unwrap(), "{name}: name of {path}");
        }
        check_with_numpy(&mount, &fixture(&format!("inference/{name}.expect.npz")));
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        assert_eq!(info["tensors"].as_u64().unwrap(), expect["tensors"].as_object().unwrap().len() as u64, "{name}: tensors beyond the oracle");
        match name {
            "mx-0000.params" => {
                assert_eq!(info["empty_arrays"], expect["empty_arrays"]);
                assert_eq!(info["symbol"], "mx-symbol.json");
                assert!(mount.read("graph.json").starts_with(b"{\"nodes\""));
            }
            "cf.caffemodel" => {
                assert_eq!(info["layer_types"], expect["layer_types"]);
                assert_eq!(mount.text("model.prototxt"), std::fs::read_to_string(fixture("inference/cf.prototxt")).unwrap());
            }
            "dn.weights" => assert_eq!(info["header"], expect["header"]),
            "darknet-alone/old.weights" => assert!(info["note"].as_str().unwrap().contains("no .cfg")),
            "llama-ggjt-v3.bin" => {
                let metadata: Value = serde_json::from_slice(&mount.read("metadata.json")).unwrap();
                assert_eq!(metadata["vocab"]["tokens"], expect["tokens"]);
                assert_eq!(metadata["family"], expect["family"]);
            }
            "llama-ggmf-v1.bin" => {
                let skipped: Vec<&str> = info["skipped"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
                assert_eq!(serde_json::json!(skipped), expect["skipped"]);
            }
            _ => {}
        }
    }
}

/// Copies of fixtures with some bytes changed, in a temporary directory: (name, bytes).
fn hostile_dir(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("inference/{name}"))).unwrap()
}

/// A refusal: exit 4, one line naming the format's damage.
fn assert_refused(source: &std::path::Path, needle: &str) {
    let out = Mount::try_new(source, &[]).err().unwrap_or_else(|| panic!("{} mounted", source.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("wfs: ") && err.contains(needle), "{err:?} lacks {needle:?}");
}

#[test]
fn hostile_counts_offsets_and_lengths_are_refused_in_one_line() {
    // MXNet: an array count of 2^31 that the file cannot hold.
    let mut mx = fixture_bytes("mx-0000.params");
    mx[16..24].copy_from_slice(&(1u64 << 31).to_le_bytes());
    let dir = hostile_dir(&[("mx.params", mx)]);
    assert_refused(&dir.path().join("mx.params"), "mxnet: arrays: 2147483648 cannot fit");

    // ncnn: a layer count of 2^31; then a .bin shorter than its layers' weights.
    let param = std::fs::read_to_string(fixture("inference/nc.param")).unwrap();
    let mut bin = fixture_bytes("nc.bin");
    let dir = hostile_dir(&[("count.param", param.replace("\n6 6\n", "\n2147483648 6\n").into_bytes()), ("count.bin", bin.clone())]);
    assert_refused(&dir.path().join("count.param"), "2147483648 layers");
    bin.truncate(bin.len() - 8);
    let dir = hostile_dir(&[("short.param", param.clone().into_bytes()), ("short.bin", bin)]);
    assert_refused(&dir.path().join("short.param"), "run past the end of short.bin");
    // Without its .bin: unreadable (exit 3), in one line naming the file it looked for.
    let dir = hostile_dir(&[("alone.param", param.into_bytes())]);
    let out = Mount::try_new(&dir.path().join("alone.param"), &[]).err().expect("mounted without its .bin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), err.trim_end().lines().count()), (Some(3), 1), "{err}");
    assert!(err.contains("alone.bin"), "{err}");

    // Caffe: a layer whose length runs past the end of the file (varint 2^62).
    let mut caffe = fixture_bytes("cf.caffemodel");
    let at = caffe.windows(2).position(|w| w == [0xA2, 0x06]).unwrap() + 2;
    let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
    let len_bytes = caffe[at..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    caffe.splice(at..at + len_bytes, huge);
    let dir = hostile_dir(&[("cf.caffemodel", caffe)]);
    assert_refused(&dir.path().join("cf.caffemodel"), "caffe: field 100 runs past the end");

    // Darknet: bytes after the last layer the cfg describes.
    let mut weights = fixture_bytes("dn.weights");
    weights.extend([0u8; 8]);
    let dir = hostile_dir(&[("dn.weights", weights), ("dn.cfg", fixture_bytes("dn.cfg"))]);
    assert_refused(&dir.path().join("dn.weights"), "8 bytes follow the last layer");

    // Legacy GGML: a vocabulary of 2^31 - 1 tokens; a tensor with 2^31 - 1 dimensions.
    let mut ggjt = fixture_bytes("llama-ggjt-v3.bin");
    ggjt[8..12].copy_from_slice(&i32::MAX.to_le_bytes());
    let dir = hostile_dir(&[("vocab.bin", ggjt)]);
    assert_refused(&dir.path().join("vocab.bin"), "vocabulary of 2147483647 tokens");
    let mut rwkv = fixture_bytes("rwkv-ggmf-v101.bin");
    rwkv[24..28].copy_from_slice(&i32::MAX.to_le_bytes());
    let dir = hostile_dir(&[("dims.bin", rwkv)]);
    assert_refused(&dir.path().join("dims.bin"), "2147483647 dimensions");
}

/// darknet stops at the end of the file: a cut file mounts the layers before the cut and says
/// where it ends.
#[test]
fn darknet_cut_short_mounts_what_is_there() {
    let mut weights = fixture_bytes("dn.weights");
    weights.truncate(20 + 4 * (4 * 4 + 108) + 8);
    let dir = hostile_dir(&[("dn.weights", weights), ("dn.cfg", fixture_bytes("dn.cfg"))]);
    let mount = Mount::new(&dir.path().join("dn.weights"), &[]);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["tensors"], 5);
    assert!(info["truncated"].as_str().unwrap().contains("2_convolutional/biases"), "{info}");
}
