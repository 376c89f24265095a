//! ONNX models written by the onnx package (tests/fixtures/onnx, gen/make_onnx.py) and by
//! exporters (real-models), mounted for real and compared with what onnx itself reads:
//! `numpy_helper.to_array` bytes, dtypes, shapes and names, the graph and the model's metadata.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Mounts a fixture and checks every initializer, `graph.json` and `info.json` against its
/// oracle, and loads every `.npy` with numpy.
fn check_fixture(rel: &str) -> Mount {
    // `typed.onnx` has `typed.onnx.expect.json`; `external_one/model.onnx` has `external_one.expect.json`.
    let base = fixture(&format!("onnx/{}", rel.strip_suffix("/model.onnx").unwrap_or(rel))).display().to_string();
    let expect = load_json(Path::new(&format!("{base}.expect.json")));
    let mount = Mount::new(&fixture(&format!("onnx/{rel}")), &[]);
    check_against(&mount, &expect);
    check_with_numpy(&mount, Path::new(&format!("{base}.expect.npz")));
    mount
}

fn check_against(mount: &Mount, expect: &Value) {
    let tensors = expect["tensors"].as_array().unwrap();
    let rows = tsv_rows(mount);
    assert_eq!(rows.len(), tensors.len(), "one row per initializer");
    for (t, row) in tensors.iter().zip(&rows) {
        let path = t["path"].as_str().unwrap();
        check_tensor(mount, path, t);
        assert_eq!(row[0], format!("{path}.npy"));
        assert_eq!(row[4], t["name"].as_str().unwrap(), "name column of {path}");
        assert_eq!(xattr_text(&mount.path(&format!("{path}.raw")), "user.wfs.name"), t["name"].as_str().unwrap());
    }
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], "onnx");
    for (key, value) in expect["info"].as_object().unwrap() {
        assert_eq!(&info[key], value, "info.json {key}");
    }
    let graph: Value = serde_json::from_slice(&mount.read("graph.json")).unwrap();
    assert_eq!(graph, expect["graph"]);
}

#[test]
fn typed_fields_of_every_type() {
    let mount = check_fixture("typed.onnx");
    // Values as numpy shows them, beyond the oracle's bytes: bit patterns became elements.
    assert_eq!(mount.text("tensors/typed/f16.dtype"), "float16\n");
    assert_eq!(mount.read("tensors/typed/i8.raw"), [0x80, 0x7F, 0xFF, 0x00]);
    assert_eq!(mount.text("tensors/typed/scalar.shape"), "\n");
    assert_eq!(mount.read("tensors/typed/empty.raw"), b"");
    assert_eq!(mount.text("tensors/typed/strings.dtype"), "string\n");
}

#[test]
fn raw_data_is_served_in_place() {
    let mount = check_fixture("raw.onnx");
    let source = fixture("onnx/raw.onnx");
    let raw = mount.path("tensors/model/layers/0/bias.raw");
    assert_eq!(xattr_text(&raw, "user.wfs.storage"), "plain");
    assert_eq!(xattr_text(&raw, "user.wfs.file"), std::fs::canonicalize(&source).unwrap().to_str().unwrap());
    let offset: usize = xattr_text(&raw, "user.wfs.offset").parse().unwrap();
    let bytes = std::fs::read(&source).unwrap();
    assert_eq!(bytes[offset..offset + 20], mount.read("tensors/model/layers/0/bias.raw"));
    // tf2onnx names: '/' splits, ':0' stays.
    assert!(mount.path("tensors/sequential/dense/MatMul/ReadVariableOp:0.npy").is_file());
}

#[test]
fn external_data_in_one_shared_file() {
    let mount = check_fixture("external_one/model.onnx");
    let raw = mount.path("tensors/big/bias.raw");
    assert!(xattr_text(&raw, "user.wfs.file").ends_with("external_one/weights.bin"));
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["external_data"], serde_json::json!(["weights.bin"]));
}

#[test]
fn external_data_in_a_subdirectory() {
    let mount = check_fixture("external_sub/model.onnx");
    assert!(xattr_text(&mount.path("tensors/dense/bias.raw"), "user.wfs.file").ends_with("external_sub/data/weights.bin"));
}

#[test]
fn external_data_in_a_file_per_tensor_with_offset_and_length() {
    let mount = check_fixture("external_per/model.onnx");
    let raw = mount.path("tensors/offset/tensor.raw");
    assert!(xattr_text(&raw, "user.wfs.file").ends_with("external_per/padded.bin"));
    assert_eq!(xattr_text(&raw, "user.wfs.offset"), "5");
    assert_eq!(xattr_text(&raw, "user.wfs.length"), "12");
}

#[test]
fn sparse_initializers_are_densified() {
    let mount = check_fixture("sparse.onnx");
    // Reads at odd offsets see the same bytes as the whole file.
    let whole = mount.read("tensors/sparse/linear.raw");
    let out = Command::new("dd").args(["bs=3", "skip=1", "status=none"]).arg(format!("if={}", mount.path("tensors/sparse/linear.raw").display())).output().unwrap();
    assert_eq!(out.stdout, whole[3..]);
}

#[test]
fn hostile_external_locations_are_refused_never_read() {
    for (name, why) in [
        ("traversal", "external data location \"../../etc/passwd\" leaves the model's directory"),
        ("absolute", "external data location \"/etc/passwd\" leaves the model's directory"),
        ("symlink", "external data location \"link.bin\" leaves the model's directory"),
        ("past_end", "external data [8, +16) lies past the end of short.bin (20 bytes)"),
        ("absurd_dims", "shape [1099511627776, 1099511627776] is too large"),
        ("short_raw", "raw_data holds 12 bytes, its shape needs 16"),
    ] {
        let out = Mount::try_new(&fixture(&format!("onnx/hostile/{name}.onnx")), &[]).map(|_| ()).unwrap_err();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(&format!("ONNX initializer \"w\": {why}")), "{name}: {stderr}");
        assert_eq!(out.status.code(), Some(4), "{name}");
    }
}

#[test]
fn truncated_models_fail_in_one_line() {
    let bytes = std::fs::read(fixture("onnx/typed.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [9, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.path().join("cut.onnx");
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let out = wfs().arg("info").arg(&path).output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success() && stderr.lines().count() == 1, "cut at {cut}: {stderr}");
        assert!(stderr.contains("ONNX"), "cut at {cut}: {stderr}");
    }
}

/// Graphs nested in node attributes far deeper than any model nests them: refused in one line,
/// without exhausting the stack.
#[test]
fn deeply_nested_graphs_are_refused() {
    // GraphProto { node { attribute { g: GraphProto { ... } } } }, innermost first.
    let mut graph: Vec<u8> = Vec::new();
    for _ in 0..10_000 {
        let attribute = [vec![0x32], varint(graph.len() as u64), graph].concat(); // g = 6
        let node = [vec![0x2A], varint(attribute.len() as u64), attribute].concat(); // attribute = 5
        graph = [vec![0x0A], varint(node.len() as u64), node].concat(); // node = 1
    }
    let model = [vec![0x08, 0x07, 0x3A], varint(graph.len() as u64), graph].concat();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.onnx");
    std::fs::write(&path, model).unwrap();
    let out = wfs().arg("info").arg(&path).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("graphs nested more than 16 deep"), "{stderr}");
}

/// A length-delimited protobuf field.
fn bytes_field(number: u8, body: &[u8]) -> Vec<u8> {
    [vec![number << 3 | 2], varint(body.len() as u64), body.to_vec()].concat()
}

fn varint_field(number: u8, value: u64) -> Vec<u8> {
    [vec![number << 3], varint(value)].concat()
}

/// A TensorProto: dims, data_type, name, then the data fields given.
fn tensor(dims: &[u64], data_type: u64, name: &str, data: &[Vec<u8>]) -> Vec<u8> {
    let mut t: Vec<u8> = dims.iter().flat_map(|&d| varint_field(1, d)).collect();
    t.extend(varint_field(2, data_type));
    t.extend(bytes_field(8, name.as_bytes()));
    t.extend(data.concat());
    t
}

/// A ModelProto (IR 8) whose graph holds these fields (initializer = 5, sparse = 15).
fn model_with(graph_fields: &[Vec<u8>]) -> Vec<u8> {
    [varint_field(1, 8), bytes_field(7, &graph_fields.concat())].concat()
}

/// Hand-made hostile initializers: each is refused in one line (or skipped, with the reason)
/// before anything is allocated for it.
#[test]
fn hostile_initializers() {
    let floats = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let longs = |v: &[i64]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let sparse = |indices: &[i64], dims: u64| {
        let values = tensor(&[2], 1, "s", &[bytes_field(9, &floats(&[1.0, 2.0]))]);
        let indices = tensor(&[indices.len() as u64], 7, "i", &[bytes_field(9, &longs(indices))]);
        bytes_field(15, &[bytes_field(1, &values), bytes_field(2, &indices), varint_field(3, dims)].concat())
    };
    let mut strings = vec![bytes_field(6, &vec![b'x'; 1 << 20])];
    strings.extend((0..1000).map(|_| bytes_field(6, b"")));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("short typed field", model_with(&[bytes_field(5, &tensor(&[1 << 26], 6, "w", &[bytes_field(5, &[1, 2, 3])]))]),
         "ONNX initializer \"w\": its typed field holds at most 3 values, its shape needs 67108864"),
        ("string padding bomb", model_with(&[bytes_field(5, &tensor(&[1001], 8, "w", &strings))]),
         "ONNX initializer \"w\": data decoded at mount would pass 536870912 bytes"),
        ("sparse indices out of order", model_with(&[sparse(&[5, 2], 8)]), "ONNX sparse initializer \"s\": indices are not strictly ascending"),
        ("sparse index outside", model_with(&[sparse(&[2, 9], 8)]), "ONNX sparse initializer \"s\": an index lies outside the dense shape"),
        ("negative dimension", model_with(&[bytes_field(5, &tensor(&[u64::MAX], 1, "w", &[]))]), "ONNX initializer \"w\": negative dimension in [-1]"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.onnx");
    for (what, bytes, why) in cases {
        std::fs::write(&path, bytes).unwrap();
        let out = wfs().arg("info").arg(&path).output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(4), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.trim_end().ends_with(why), "{what}: {stderr}");
    }
    // int4 has no dtype in wfs: skipped with the reason; the rest mounts.
    let int4 = tensor(&[2], 22, "q", &[bytes_field(9, &[0x21])]);
    let fine = tensor(&[1], 1, "f", &[bytes_field(9, &floats(&[0.5]))]);
    std::fs::write(&path, model_with(&[bytes_field(5, &int4), bytes_field(5, &fine)])).unwrap();
    let mount = Mount::new(&path, &[]);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["skipped"], serde_json::json!([{"name": "q", "reason": "element type 22 (int4) has no dtype in wfs"}]));
    assert_eq!(mount.read("tensors/f.raw"), 0.5f32.to_le_bytes());
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// The real ONNX files of ../shared/real-models against their oracles.
#[test]
fn real_models_match_their_oracles() {
    let Some(dir) = real_models() else { return };
    for item in ["onnx_cartpole_extdata", "onnx_cntk_mnist_typed", "onnx_skl2onnx_no_init", "onnx_tf2onnx_tiny"] {
        let oracle = load_json(&dir.join(format!("{item}.oracle.json")));
        let part = &oracle["parts"][0];
        let mount = Mount::new(&dir.join(item).join(part["path"].as_str().unwrap()), &[]);
        check_part_tensors(&mount, item, part);
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        for (key, value) in part["metadata"].as_object().unwrap() {
            assert_eq!(&info[key], value, "{item}: info.json {key}");
        }
        let graph: Value = serde_json::from_slice(&mount.read("graph.json")).unwrap();
        let names = |key: &str| graph[key].as_array().unwrap().iter().map(|v| v["name"].clone()).collect::<Vec<_>>();
        assert_eq!(Value::Array(names("inputs")), part["graph"]["inputs"], "{item}");
        assert_eq!(Value::Array(names("outputs")), part["graph"]["outputs"], "{item}");
        let ops = graph["ops"].as_array().unwrap();
        assert_eq!(ops.len() as u64, part["graph"]["nodes"].as_u64().unwrap(), "{item}");
        let mut types: Vec<&str> = ops.iter().map(|o| o["op_type"].as_str().unwrap()).collect();
        types.sort();
        types.dedup();
        assert_eq!(serde_json::json!(types), part["graph"]["op_types"], "{item}");
    }
}

/// A model on standard input has no directory: its own initializers mount, external data is
/// refused rather than looked for beside the working directory.
#[test]
fn standard_input() {
    use std::process::Stdio;
    let run = |rel: &str| {
        let file = std::fs::File::open(fixture(rel)).unwrap();
        wfs().args(["info", "--json", "-"]).stdin(Stdio::from(file)).output().unwrap()
    };
    let out = run("onnx/typed.onnx");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["tensors"], 27);
    let out = run("onnx/external_one/model.onnx");
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8(out.stderr).unwrap().contains("external data cannot be found beside a model read from standard input"));
}
