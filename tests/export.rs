//! `model.safetensors` (docs/tree.md 8) and `wfs convert`: every fixture format mounted and its file
//! read by the real `safetensors` package and by an independent parser of the format's rules
//! (tests/safetensors_check.py), each tensor compared with the tree's `.raw` and with the
//! oracle recorded when the fixture was written; every real model of ../shared/real-models that
//! mounts, against its oracle; `wfs convert` byte-identical to the mount; `noexport`.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// A tensor as the checker read it from the file.
#[derive(Debug, Clone)]
struct FileTensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    sha256: String,
}

/// What tests/safetensors_check.py found in a file (it fails on any broken rule).
struct Checked {
    metadata: serde_json::Map<String, Value>,
    tensors: Vec<FileTensor>,
}

impl Checked {
    fn left_out(&self) -> Vec<String> {
        self.metadata.get("left_out").and_then(Value::as_str).map_or_else(Vec::new, |s| serde_json::from_str(s).unwrap())
    }
}

fn dims(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect()
}

fn check_file(path: &Path) -> Checked {
    let script = repo().join("tests/safetensors_check.py");
    let out = Command::new("python3").arg(script).arg(path).output().unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tensors = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| FileTensor {
            name: t["name"].as_str().unwrap().into(),
            dtype: t["dtype"].as_str().unwrap().into(),
            shape: dims(&t["shape"]),
            sha256: t["sha256"].as_str().unwrap().into(),
        })
        .collect();
    Checked {
        metadata: report["metadata"].as_object().unwrap().clone(),
        tensors,
    }
}

/// How docs/tree.md 8 stores a tensor of this `.dtype`: `Some(dtype)` for the types safetensors
/// has, F64 pairs for complex128, `None` for strings (left out); anything else is a quantized
/// type, stored as its float32 values.
fn safetensors_dtype(numpy: &str) -> Option<&'static str> {
    Some(match numpy {
        "bool" => "BOOL",
        "int8" => "I8",
        "uint8" => "U8",
        "int16" => "I16",
        "uint16" => "U16",
        "int32" => "I32",
        "uint32" => "U32",
        "int64" => "I64",
        "uint64" => "U64",
        "float16" => "F16",
        "bfloat16" => "BF16",
        "float32" => "F32",
        "float64" | "complex128" => "F64",
        "complex64" => "C64",
        "float8_e4m3fn" => "F8_E4M3",
        "float8_e5m2" => "F8_E5M2",
        "float8_e4m3fnuz" => "F8_E4M3FNUZ",
        "float8_e5m2fnuz" => "F8_E5M2FNUZ",
        "float8_e8m0fnu" => "F8_E8M0",
        "float4_e2m1fn" => "F4",
        "float6_e2m3fn" => "F6_E2M3",
        "float6_e3m2fn" => "F6_E3M2",
        "string" => return None,
        _ => "F32",
    })
}

fn is_quantized(numpy: &str) -> bool {
    safetensors_dtype(numpy) == Some("F32") && numpy != "float32"
}

/// The shape a tensor has in the file: complex128 gains a last dimension of 2.
fn stored_shape(numpy: &str, shape: &[u64]) -> Vec<u64> {
    let mut shape = shape.to_vec();
    if numpy == "complex128" {
        shape.push(2);
    }
    shape
}

/// One row of a `tensors.tsv`.
struct Row {
    path: String,
    dtype: String,
    shape: Vec<u64>,
    name: String,
}

fn rows(mount: &Mount, top: &str) -> Vec<Row> {
    mount
        .text(&format!("{top}tensors.tsv"))
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let shape = f[2].split(',').filter(|d| !d.is_empty()).map(|d| d.parse().unwrap()).collect();
            Row {
                path: f[0].into(),
                dtype: f[1].into(),
                shape,
                name: unescape(f[4]),
            }
        })
        .collect()
}

/// A `tensors.tsv` name field read back: the `\\`, `\t`, `\n`, `\r` escapes undone.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '\\' => match chars.next() {
                Some('t') => '\t',
                Some('n') => '\n',
                Some('r') => '\r',
                other => other.unwrap_or('\\'),
            },
            c => c,
        });
    }
    out
}

/// The data section of a `.npy` file (v1 or v2 header).
fn npy_data(npy: &[u8]) -> &[u8] {
    let header_len = match npy[6] {
        1 => 10 + usize::from(u16::from_le_bytes([npy[8], npy[9]])),
        _ => 12 + u32::from_le_bytes(npy[8..12].try_into().unwrap()) as usize,
    };
    &npy[header_len..]
}

/// The file at `top` (`""` or `"<prefix>/"`) against the tree: metadata, and each tensor in
/// `tensors.tsv` order with the dtype, shape and bytes of its `.raw` (quantized: its `.npy`
/// data); every row not stored is a string (listed in `left_out`) or a second view of a stored
/// tensor (same bytes). Returns the file's tensors.
fn check_against_tree(mount: &Mount, top: &str) -> Checked {
    let checked = check_file(&mount.path(&format!("{top}model.safetensors")));
    let info: Value = serde_json::from_slice(&mount.read(&format!("{top}info.json"))).unwrap();
    assert_eq!(checked.metadata["format"], "pt");
    assert_eq!(checked.metadata["source_format"], info["format"], "{top}");
    let rows = rows(mount, top);
    let stem = |p: &str| p.trim_end_matches(".npy").trim_end_matches(".raw").to_string();
    let mut next = 0;
    let mut stored = Vec::new();
    for t in &checked.tensors {
        // The next row this key names: its own name, its path (in a top level above a part),
        // or its name with the collision suffix.
        let at = rows[next..]
            .iter()
            .position(|r| t.name == r.name || t.name == stem(&r.path) || t.name.strip_prefix(&format!("{}~", r.name)).is_some_and(|n| n.parse::<u32>().is_ok()))
            .unwrap_or_else(|| panic!("{top}: {} is not a later row of tensors.tsv", t.name));
        for skipped in &rows[next..next + at] {
            assert!(
                cannot_be_stored(skipped) || stored.iter().any(|s: &FileTensor| s.sha256 == raw_sha(mount, top, skipped)),
                "{top}: {} is missing",
                skipped.path
            );
        }
        let row = &rows[next + at];
        next += at + 1;
        assert_eq!(Some(t.dtype.as_str()), safetensors_dtype(&row.dtype), "{top}{}", row.path);
        assert_eq!(t.shape, stored_shape(&row.dtype, &row.shape), "{top}{}", row.path);
        let bytes = if is_quantized(&row.dtype) {
            sha256_hex(npy_data(&mount.read(&format!("{top}{}", row.path))))
        } else {
            raw_sha(mount, top, row)
        };
        assert_eq!(t.sha256, bytes, "{top}{} differs from the tree", row.path);
        stored.push(t.clone());
    }
    for skipped in &rows[next..] {
        assert!(
            cannot_be_stored(skipped) || stored.iter().any(|s| s.sha256 == raw_sha(mount, top, skipped)),
            "{top}: {} is missing",
            skipped.path
        );
    }
    let left_out = checked.left_out();
    let unstorable: Vec<&Row> = rows.iter().filter(|r| cannot_be_stored(r)).collect();
    assert_eq!(left_out.len(), unstorable.len(), "{top}: left_out {left_out:?}");
    checked
}

/// Strings, and quantized tensors without a decoder (no `.npy`): safetensors cannot hold them.
fn cannot_be_stored(row: &Row) -> bool {
    row.dtype == "string" || (is_quantized(&row.dtype) && row.path.ends_with(".raw"))
}

fn raw_sha(mount: &Mount, top: &str, row: &Row) -> String {
    let raw = format!("{top}{}.raw", row.path.trim_end_matches(".npy").trim_end_matches(".raw"));
    sha256_hex(&mount.read(&raw))
}

/// One tensor of an oracle: its name in the file when the oracle knows it.
struct Expected {
    name: Option<String>,
    dtype: String,
    shape: Vec<u64>,
    sha256: String,
    /// For quantized types, the digest of the float32 values the oracle decoded, if recorded.
    decoded_sha256: Option<String>,
}

/// The file's tensors against an oracle: each oracle tensor is in the file under its name, or
/// (oracles without names, or names the tree gives differently, e.g. Keras 3 variables without
/// a config) exactly one file tensor has its dtype, shape and bytes; a string is listed in
/// `left_out`; a second view of a stored tensor (same bytes) may be left out. Every file tensor
/// is one of the oracle's.
fn check_against_oracle(checked: &Checked, expected: &[Expected], what: &str) {
    let left_out = checked.left_out();
    let mut unmatched: Vec<&FileTensor> = checked.tensors.iter().collect();
    let mut by_content = Vec::new();
    for e in expected {
        let Some(dtype) = safetensors_dtype(&e.dtype) else {
            if let Some(name) = &e.name {
                assert!(left_out.contains(name), "{what}: string tensor {name} not in left_out {left_out:?}");
            }
            continue;
        };
        if is_quantized(&e.dtype) && e.name.as_ref().is_some_and(|n| left_out.contains(n)) {
            continue;
        }
        let shape = stored_shape(&e.dtype, &e.shape);
        // Quantized tensors are stored decoded: the oracle's digest is of the blocks, so the
        // values are compared with its decoded digest where it has one.
        let digest = if is_quantized(&e.dtype) { e.decoded_sha256.as_ref() } else { Some(&e.sha256) };
        let same = move |t: &FileTensor| t.dtype == dtype && t.shape == shape && digest.is_none_or(|d| &t.sha256 == d);
        match unmatched.iter().position(|t| Some(&t.name) == e.name.as_ref()) {
            Some(i) => {
                let t = unmatched.remove(i);
                assert!(
                    same(t),
                    "{what}: {} is {} {:?} {}, the oracle says {} {:?} {}",
                    t.name,
                    t.dtype,
                    t.shape,
                    t.sha256,
                    e.dtype,
                    e.shape,
                    e.sha256
                );
            }
            None => by_content.push((e, same)),
        }
    }
    for (e, same) in by_content {
        match unmatched.iter().position(|t| same(t)) {
            Some(i) => {
                unmatched.remove(i);
            }
            None => assert!(
                checked.tensors.iter().any(same),
                "{what}: {} ({} {:?}) is not in the file",
                e.name.as_deref().unwrap_or("a tensor"),
                e.dtype,
                e.shape
            ),
        }
    }
    assert!(unmatched.is_empty(), "{what}: not in the oracle: {:?}", unmatched.iter().map(|t| &t.name).collect::<Vec<_>>());
}

/// A fixture's `.expect.json`: Keras and TensorFlow fixtures map each tensor's path in the
/// tree (its name) to it; the other formats list tensors with their own `name`.
fn expected_from_fixture(expect: &Path) -> Vec<Expected> {
    let oracle = load_json(expect);
    let Some(by_path) = oracle["tensors"].as_object() else {
        return expected_from_part(&oracle);
    };
    by_path
        .iter()
        .map(|(path, t)| Expected {
            name: Some(path.clone()),
            dtype: t["dtype"].as_str().unwrap().into(),
            shape: dims(&t["shape"]),
            sha256: t["sha256"].as_str().unwrap().into(),
            decoded_sha256: None,
        })
        .collect()
}

/// Every fixture of every format wfs reads, with the oracle it was written with.
const FIXTURES: &[(&str, &str)] = &[
    ("h5/k2_functional.h5", "h5/k2_functional.h5.expect.json"),
    ("h5/k2_sequential.h5", "h5/k2_sequential.h5.expect.json"),
    ("h5/k2_weights.h5", "h5/k2_weights.h5.expect.json"),
    ("h5/k3_legacy.h5", "h5/k3_legacy.h5.expect.json"),
    ("h5/plain_data.h5", "h5/plain_data.h5.expect.json"),
    ("h5/v_bigendian.h5", "h5/v_bigendian.h5.expect.json"),
    ("h5/v_compact.h5", "h5/v_compact.h5.expect.json"),
    ("h5/v_fletcher_lzf.h5", "h5/v_fletcher_lzf.h5.expect.json"),
    ("h5/v_float16.h5", "h5/v_float16.h5.expect.json"),
    ("h5/v_gzip_shuffle.h5", "h5/v_gzip_shuffle.h5.expect.json"),
    ("h5/v_latest.h5", "h5/v_latest.h5.expect.json"),
    ("h5/v_unallocated.h5", "h5/v_unallocated.h5.expect.json"),
    ("h5/v_userblock.h5", "h5/v_userblock.h5.expect.json"),
    ("keras3/k3_deflated.keras", "keras3/k3_deflated.keras.expect.json"),
    ("keras3/k3_functional.keras", "keras3/k3_functional.keras.expect.json"),
    ("keras3/k3_mixed.keras", "keras3/k3_mixed.keras.expect.json"),
    ("keras3/k3_sharded.weights.json", "keras3/k3_sharded.weights.json.expect.json"),
    ("keras3/k3_sub.weights.h5", "keras3/k3_sub.weights.h5.expect.json"),
    ("ckpt/sharded", "ckpt/sharded.ckpt-1.expect.json"),
    ("ckpt/tf1_saver", "ckpt/tf1_saver.model.ckpt-5.expect.json"),
    ("ckpt/tf2_dtypes/dtypes", "ckpt/tf2_dtypes.dtypes.expect.json"),
    ("savedmodel/k3_export", "savedmodel/k3_export.expect.json"),
    ("savedmodel/tf1_builder", "savedmodel/tf1_builder.expect.json"),
    ("savedmodel/tf_module", "savedmodel/tf_module.expect.json"),
    ("savedmodel/tf_module.zip", "savedmodel/tf_module.zip.expect.json"),
    ("savedmodel/tfk_deflated.zip", "savedmodel/tfk_deflated.zip.expect.json"),
    ("savedmodel/tfk_functional", "savedmodel/tfk_functional.expect.json"),
];

#[test]
fn every_fixture_format_as_one_safetensors_file() {
    let mut numpy_dtypes_only = 0;
    for (source, expect) in FIXTURES {
        let mount = Mount::new(&fixture(source), &[]);
        let checked = check_against_tree(&mount, "");
        check_against_oracle(&checked, &expected_from_fixture(&fixture(expect)), source);
        numpy_dtypes_only += usize::from(checked.tensors.iter().all(|t| !t.dtype.starts_with("BF") && !t.dtype.starts_with("F8")));
        let size = std::fs::metadata(mount.path("model.safetensors")).unwrap().len();
        assert_eq!(size, mount.read("model.safetensors").len() as u64, "{source}: size at stat time");
    }
    // load_file ran on these (the checker uses it whenever numpy has every dtype).
    assert!(numpy_dtypes_only >= FIXTURES.len() - 3);
}

/// The fixtures of the formats with their own tensor names (safetensors, NumPy, GGUF, ONNX,
/// TFLite, and any added later): every `<source>.expect.json` whose source mounts.
#[test]
fn every_named_format_fixture_as_one_safetensors_file() {
    let mut checked = Vec::new();
    for dir in ["safetensors", "numpy", "gguf", "onnx", "tflite", "torch"] {
        let Ok(listing) = std::fs::read_dir(fixture(dir)) else { continue };
        let mut oracles: Vec<String> = listing.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.ends_with(".expect.json")).collect();
        oracles.sort();
        for oracle in oracles {
            let source = fixture(&format!("{dir}/{}", oracle.trim_end_matches(".expect.json")));
            let Ok(mount) = Mount::try_new(&source, &[]) else { continue };
            let file = check_against_tree(&mount, "");
            check_against_oracle(&file, &expected_from_fixture(&fixture(&format!("{dir}/{oracle}"))), &oracle);
            checked.push(oracle);
        }
    }
    eprintln!("checked {}: {checked:?}", checked.len());
    assert!(checked.len() >= 15, "{checked:?}");
}

/// A directory of checkpoints: one file per `<prefix>/`, each against its own oracle, and one
/// at the root holding them all as `<prefix>/<name>`.
#[test]
fn checkpoint_directory_has_one_file_per_checkpoint_and_one_for_all() {
    let mount = Mount::new(&fixture("ckpt/tf2_keras"), &[]);
    let mut all = Vec::new();
    for prefix in ["ckpt-1", "ckpt-2"] {
        let checked = check_against_tree(&mount, &format!("{prefix}/"));
        check_against_oracle(&checked, &expected_from_fixture(&fixture(&format!("ckpt/tf2_keras.{prefix}.expect.json"))), prefix);
        assert!(checked.tensors.iter().all(|t| t.name.starts_with("variables/")), "layers/ views are stored once, under variables/");
        all.extend(checked.tensors.into_iter().map(|t| FileTensor {
            name: format!("{prefix}/{}", t.name),
            ..t
        }));
    }
    let root = check_against_tree(&mount, "");
    let names = |ts: &[FileTensor]| ts.iter().map(|t| (t.name.clone(), t.sha256.clone())).collect::<Vec<_>>();
    assert_eq!(names(&root.tensors), names(&all));
    assert_eq!(root.left_out(), ["ckpt-1/variables/_CHECKPOINTABLE_OBJECT_GRAPH", "ckpt-2/variables/_CHECKPOINTABLE_OBJECT_GRAPH"]);
}

/// bfloat16 and float8-free models load whole with `safetensors.numpy.load_file` (in the
/// checker); bfloat16 keeps its stored bits, complex128 becomes float64 pairs, strings are left
/// out: the dtypes fixture has every TensorFlow dtype.
#[test]
fn every_tensorflow_dtype_is_stored_as_itself_or_documented() {
    let mount = Mount::new(&fixture("ckpt/tf2_dtypes/dtypes"), &[]);
    let checked = check_against_tree(&mount, "");
    let get = |name: &str| checked.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!((get("variables/store/v_bfloat16").dtype.as_str(), &get("variables/store/v_bfloat16").shape), ("BF16", &vec![3, 2]));
    assert_eq!(
        (get("variables/store/v_complex128").dtype.as_str(), &get("variables/store/v_complex128").shape),
        ("F64", &vec![2, 2, 2])
    );
    assert_eq!(get("variables/store/v_empty").shape, [0, 3]);
    assert_eq!(checked.left_out(), ["variables/_CHECKPOINTABLE_OBJECT_GRAPH", "variables/store/v_string"]);
}

/// `wfs convert` writes the mounted file's bytes, to a file and to standard output.
#[test]
fn convert_is_byte_identical_to_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    for source in ["h5/k2_functional.h5", "keras3/k3_mixed.keras", "ckpt/tf2_keras", "savedmodel/tfk_functional"] {
        let mount = Mount::new(&fixture(source), &[]);
        let out = dir.path().join("out.safetensors");
        let status = wfs().arg("convert").arg(fixture(source)).arg(&out).status().unwrap();
        assert!(status.success(), "{source}");
        let cmp = Command::new("cmp").arg(&out).arg(mount.path("model.safetensors")).output().unwrap();
        assert!(cmp.status.success(), "{source}: {}", String::from_utf8_lossy(&cmp.stdout));
        let piped = wfs().arg("convert").arg(fixture(source)).arg("-").output().unwrap();
        assert!(piped.status.success() && piped.stderr.is_empty(), "{source}: {}", String::from_utf8_lossy(&piped.stderr));
        assert!(piped.stdout == std::fs::read(&out).unwrap(), "{source}: standard output differs");
    }
    // A failure is one line, and leaves no file behind.
    let out = dir.path().join("bad.safetensors");
    let failed = wfs().arg("convert").arg(dir.path().join("missing.h5")).arg(&out).output().unwrap();
    assert_eq!(failed.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&failed.stderr).lines().count(), 1);
    assert!(!out.exists());
}

/// `-o noexport`, `--no-export` and the mount(8) helper form leave the file out.
#[test]
fn noexport_leaves_the_file_out() {
    let source = fixture("h5/k2_sequential.h5");
    for args in [&["-o", "noexport"][..], &["--no-export"], &["-o", "ro,noexport"]] {
        let mount = Mount::new(&source, args);
        assert!(!mount.path("model.safetensors").exists(), "{args:?}");
        assert!(mount.path("tensors.tsv").exists());
    }
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    let _guard = UnmountGuard(point.clone());
    let out = wfs().arg(&source).arg(&point).args(["-o", "ro,noexport"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(point.join("tensors.tsv").exists() && !point.join("model.safetensors").exists());
    let listed = wfs().args(["ls", "--no-export"]).arg(&source).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("model.safetensors"));
}

/// What an oracle part says the file must hold, by the name each tensor has in the tree:
/// docs/tree.md 7.1's own names, `variables/<key>` for checkpoint keys (docs/tree.md 6); HDF5 paths have
/// no such mapping and are matched by content.
fn expected_from_part(part: &Value) -> Vec<Expected> {
    // whisper.cpp's mel filters are a tensor of the tree; its oracle describes them in metadata.
    let mel = part["metadata"].get("mel_filters").map(|m| {
        let mut m = m.clone();
        m["name"] = "mel_filters".into();
        m
    });
    part["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .chain(mel.as_ref())
        .map(|t| {
            let name = match (t.get("name"), t.get("key")) {
                (Some(name), _) => Some(name.as_str().unwrap().to_string()),
                (None, Some(key)) => {
                    let key = key.as_str().unwrap();
                    Some(format!("variables/{}", key.strip_suffix("/.ATTRIBUTES/VARIABLE_VALUE").unwrap_or(key)))
                }
                (None, None) => None,
            };
            Expected {
                name,
                dtype: t["dtype"].as_str().unwrap().into(),
                shape: dims(&t["shape"]),
                sha256: t["sha256"].as_str().unwrap().into(),
                decoded_sha256: t.get("npy_sha256").and_then(Value::as_str).map(str::to_string),
            }
        })
        .collect()
}

/// Every item of ../shared/real-models that wfs reads (common::NOT_YET_READ and the broken
/// items aside), its model.safetensors against the item's oracle: checkpoint directories per
/// `<prefix>/` and at the root.
#[test]
fn every_real_model_matches_its_oracle() {
    let Some(root) = real_models() else { return };
    let items = real_items(&root);
    let read = items.iter().filter(|(item, _)| !item.starts_with("bad/") && !real_item_refused(item));
    for (item, oracle) in read {
        let parts = oracle["parts"].as_array().unwrap();
        let checkpoints: Vec<&Value> = parts.iter().filter(|p| p.get("prefix").is_some()).collect();
        if !checkpoints.is_empty() {
            let mount = Mount::new(&root.join(item), &[]);
            let several = checkpoints.len() > 1;
            let mut all = Vec::new();
            for part in &checkpoints {
                let prefix = part["prefix"].as_str().unwrap();
                let top = if several { format!("{prefix}/") } else { String::new() };
                let file = check_against_tree(&mount, &top);
                check_against_oracle(&file, &expected_from_part(part), &format!("{item}/{top}"));
                all.extend(file.tensors.into_iter().map(|t| format!("{top}{}", t.name)));
            }
            if several {
                let file = check_against_tree(&mount, "");
                let mut names: Vec<String> = file.tensors.into_iter().map(|t| t.name).collect();
                names.sort();
                all.sort();
                assert_eq!(names, all, "{item}: root file");
            }
            continue;
        }
        for part in parts {
            let Some(path) = part["path"].as_str() else { continue };
            let mount = Mount::new(&root.join(item).join(path), &[]);
            let file = check_against_tree(&mount, "");
            check_against_oracle(&file, &expected_from_part(part), item);
        }
    }
}

/// Random models (any dtype, repeated and hostile names, shared views, quantized tensors with
/// and without a decoder) give a file that an independent parser of docs/formats/safetensors.md#header-and-offset-validation reads back
/// as exactly the model's tensors, in order, and that reads the same at any offset.
mod properties {
    use proptest::prelude::*;
    use std::sync::Arc;
    use wfs::dtype::DType;
    use wfs::fs::Fs;
    use wfs::fuzzing::{check_tree, parse_safetensors};
    use wfs::model::{InMemory, Model, Tensor};
    use wfs::tree::Tree;

    const DTYPES: [DType; 20] = [
        DType::Bool,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::C64,
        DType::C128,
        DType::Str(3),
        DType::F8E4M3FN,
        DType::F4E2M1FN,
        DType::F6E3M2FN,
        DType::Block { name: "q_test", elems: 4, bytes: 3 },
    ];

    /// What a test expects of one tensor in the file: `None` when it must be left out.
    struct Want {
        name: String,
        stored: Option<(&'static str, Vec<u64>, Vec<u8>)>,
    }

    /// A tensor's dtype (index in DTYPES), shape, name, whether it is seen twice (or, for
    /// quantized types, has a decoder), and the first byte of its contents.
    type Spec = (usize, Vec<u64>, String, bool, u8);

    fn specs() -> impl Strategy<Value = Vec<Spec>> {
        prop::collection::vec((0..DTYPES.len(), prop::collection::vec(0u64..4, 0..3), "[ab./~_]{1,4}", any::<bool>(), any::<u8>()), 0..24)
    }

    fn model_of(specs: Vec<Spec>) -> (Model, Vec<Want>) {
        let mut model = Model {
            format: "random".into(),
            ..Model::default()
        };
        let mut wants: Vec<Want> = Vec::new();
        let mut taken = std::collections::HashSet::from(["__metadata__".to_string()]);
        for (which, mut shape, name, flag, fill) in specs {
            let dtype = DTYPES[which];
            // Packed types hold whole blocks: a last dimension of 4 fills them.
            if matches!(dtype, DType::F4E2M1FN | DType::F6E3M2FN | DType::Block { .. }) {
                shape.push(4);
            }
            let count = shape.iter().product::<u64>();
            let raw: Vec<u8> = (0..Tensor::raw_size(dtype, &shape).unwrap()).map(|i| fill.wrapping_add(i as u8)).collect();
            let mut tensor = Tensor::named(&name, dtype, shape.clone(), Arc::new(InMemory(raw.clone().into())));
            let stored = match dtype {
                DType::Str(_) => None,
                DType::C128 => Some(("F64", [shape.clone(), vec![2]].concat(), raw)),
                DType::Block { .. } if flag => {
                    let decoded: Vec<u8> = (0..count * 4).map(|i| fill ^ i as u8).collect();
                    tensor.decoded = Some(Arc::new(InMemory(decoded.clone().into())));
                    Some(("F32", shape.clone(), decoded))
                }
                DType::Block { .. } => None,
                other => Some((other.safetensors_name().unwrap(), shape.clone(), raw)),
            };
            // The same tensor a second time, as a checkpoint's layers/ view: stored once.
            let view = (flag && !wants.is_empty()).then(|| Tensor {
                path: vec!["layers".into(), name.clone()],
                name: format!("view/{name}"),
                ..tensor.clone()
            });
            let key = (1u32..).map(|n| if n == 1 { name.clone() } else { format!("{name}~{n}") }).find(|k| !taken.contains(k)).unwrap();
            taken.insert(key.clone());
            wants.push(Want { name: key, stored });
            model.tensors.push(tensor);
            model.tensors.extend(view);
        }
        (model, wants)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn assembled_file_parses_back_to_the_models_tensors(specs in specs(), at in any::<prop::sample::Index>(), len in 0u32..64) {
            let (model, wants) = model_of(specs);
            let fs = Fs::new(Tree::build(model, "random"));
            check_tree(fs.tree()).map_err(TestCaseError::fail)?;
            let ino = fs.tree().resolve("model.safetensors").unwrap();
            let size = fs.attr(ino).unwrap().size;
            let file = fs.read(ino, 0, u32::try_from(size).unwrap() + 1).unwrap();
            prop_assert_eq!(file.len() as u64, size);
            let (metadata, entries) = parse_safetensors(&file).map_err(TestCaseError::fail)?;
            let data = &file[file.len() - entries.last().map_or(0, |e| e.range.end as usize)..];
            let tensors: Vec<(String, String, Vec<u64>, Vec<u8>)> =
                entries.into_iter().map(|e| (e.key, e.dtype, e.shape, data[e.range.start as usize..e.range.end as usize].to_vec())).collect();
            prop_assert_eq!(metadata["format"].as_str(), Some("pt"));
            prop_assert_eq!(metadata["source_format"].as_str(), Some("random"));
            let stored: Vec<(String, String, Vec<u64>, Vec<u8>)> = wants.iter().filter_map(|w| w.stored.clone().map(|(d, s, b)| (w.name.clone(), d.to_string(), s, b))).collect();
            prop_assert_eq!(tensors, stored);
            let left_out: Vec<&str> = wants.iter().filter(|w| w.stored.is_none()).map(|w| w.name.as_str()).collect();
            let listed: Vec<String> = metadata.get("left_out").map_or_else(Vec::new, |l| serde_json::from_str(l.as_str().unwrap()).unwrap());
            prop_assert_eq!(listed, left_out);
            let start = at.index(file.len() + 1);
            let part = fs.read(ino, start as u64, len).unwrap();
            prop_assert_eq!(&part[..], &file[start..(start + len as usize).min(file.len())]);
        }
    }
}
