//! safetensors and NumPy sources (tests/fixtures/gen/make_safetensors_numpy.py), mounted for
//! real and checked against what safetensors, numpy and ml_dtypes wrote and read back: every
//! tensor's bytes, dtype, shape, name (tensors.tsv and `user.wfs.name`), and its `.npy` loaded
//! with numpy; the real files of ../shared/real-models against their oracles; and hostile files
//! refused in one line or mounted safely, in bounded memory.

use crate::common::*;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

/// Checks a mount against a fixture's `.expect.json` and `.expect.npz`: the tensors in order
/// (tensors.tsv rows with their names, `.raw` digest, `.shape`, `.dtype`, `user.wfs.name`),
/// the refused members, and every `.npy` through numpy.
fn check_fixture(mount: &Mount, oracle: &str) {
    let expect = load_json(&fixture(&format!("{oracle}.expect.json")));
    let tensors = expect["tensors"].as_array().unwrap();
    let rows = tsv_rows(mount);
    assert_eq!(rows.len(), tensors.len(), "{oracle}: tensor count");
    for (t, row) in tensors.iter().zip(&rows) {
        let path = t["path"].as_str().unwrap();
        let name = t["name"].as_str().unwrap();
        check_tensor(mount, path, t);
        let shape: Vec<String> = t["shape"].as_array().unwrap().iter().map(|d| d.to_string()).collect();
        let raw_len = mount.read(&format!("{path}.raw")).len().to_string();
        let want = [format!("{path}.npy"), t["dtype"].as_str().unwrap().to_string(), shape.join(","), raw_len, name.to_string()];
        assert_eq!(row[..], want[..], "{oracle}: tensors.tsv row");
        assert_eq!(xattr_text(&mount.path(&format!("{path}.npy")), "user.wfs.name"), name, "{oracle}: user.wfs.name");
    }
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], expect["format"]);
    if let Some(skipped) = expect.get("skipped").and_then(Value::as_array) {
        let mut refused: Vec<&str> = info["skipped"].as_array().map(|s| s.iter().map(|e| e["name"].as_str().unwrap()).collect()).unwrap_or_default();
        refused.sort();
        let want: Vec<&str> = skipped.iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(refused, want, "{oracle}: refused members");
        assert!(info["skipped"].as_array().into_iter().flatten().all(|e| !e["reason"].as_str().unwrap().is_empty()));
    }
    check_with_numpy(mount, &fixture(&format!("{oracle}.expect.npz")));
}

fn mount_fixture(rel: &str) -> Mount {
    let mount = Mount::new(&fixture(rel), &[]);
    check_fixture(&mount, rel);
    mount
}

#[test]
fn safetensors_every_dtype_scalars_and_empty_tensors() {
    let mount = mount_fixture("safetensors/all_dtypes.safetensors");
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    let expect = load_json(&fixture("safetensors/all_dtypes.safetensors.expect.json"));
    assert_eq!(info["metadata"], expect["metadata"]);
    // Served in place: the bytes lie in the file at the offset the xattrs give.
    let raw = mount.path("tensors/model/layers/0/self_attn/q_proj/weight.raw");
    assert_eq!(xattr_text(&raw, "user.wfs.storage"), "plain");
    let offset: usize = xattr_text(&raw, "user.wfs.offset").parse().unwrap();
    let file = std::fs::read(fixture("safetensors/all_dtypes.safetensors")).unwrap();
    assert_eq!(&file[offset..offset + 96], std::fs::read(&raw).unwrap().as_slice());
    assert_eq!(mount.text("tensors/scalar/step.shape"), "\n");
}

#[test]
fn safetensors_float6() {
    mount_fixture("safetensors/float6.safetensors");
}

#[test]
fn safetensors_sharded_index_is_one_tree() {
    let mount = Mount::new(&fixture("safetensors/sharded/model.safetensors.index.json"), &[]);
    check_fixture(&mount, "safetensors/sharded");
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    let expect = load_json(&fixture("safetensors/sharded.expect.json"));
    assert_eq!(info["metadata"], expect["metadata"]);
    let shards: Vec<&str> = info["shards"].as_array().unwrap().iter().map(|s| s["file"].as_str().unwrap()).collect();
    assert_eq!(shards, expect["shards"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect::<Vec<_>>());
}

#[test]
fn npz_stored_members_in_place() {
    let mount = mount_fixture("numpy/arrays.npz");
    assert_eq!(xattr_text(&mount.path("tensors/dense/kernel.raw"), "user.wfs.storage"), "plain");
    // Big-endian and Fortran-order members are converted on read.
    assert_eq!(xattr_text(&mount.path("tensors/fortran_be.raw"), "user.wfs.storage"), "decoded");
}

#[test]
fn npz_compressed_members_inflate_on_read() {
    mount_fixture("numpy/compressed.npz");
    // A cache far smaller than the 2.8 MB member: every chunk inflates again, bytes unchanged.
    let small = Mount::new(&fixture("numpy/compressed.npz"), &["--cache-size", "64K"]);
    check_fixture(&small, "numpy/compressed.npz");
}

#[test]
fn npz_refuses_pickles_and_types_without_a_wfs_type() {
    mount_fixture("numpy/mixed.npz");
    // Keras 3 `weights_format="npz"`: every member is a pickled dict.
    mount_fixture("numpy/model.weights.npz");
}

#[test]
fn npy_files() {
    for name in ["fortran_be.npy", "matrix.npy", "bytes.npy"] {
        mount_fixture(&format!("numpy/{name}"));
    }
}

fn assert_refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("wfs: ") && err.contains(needle), "{err:?} lacks {needle:?}");
}

/// A lone object array is left out as an .npz member is: the mount holds no tensor and says
/// why in `info.json`, with the pickle's globals for `wfs scan`.
#[test]
fn pickled_npy_is_left_out_with_its_reason() {
    let mount = Mount::new(&fixture("numpy/object.npy"), &[]);
    let info: serde_json::Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["tensors"], 0);
    assert_eq!(info["skipped"], serde_json::json!([{"name": "object", "reason": "object array (pickled Python objects, never unpickled)"}]));
    assert!(info["pickle_globals"]["object.npy"].is_object(), "{info}");
    assert_eq!(mount.text("tensors.tsv").lines().count(), 1, "the header line only");
}

/// `wfs mount - POINT` with `source` on standard input.
fn mount_stdin(source: &Path) -> Mount {
    let dir = tempfile::Builder::new().prefix("wfs-test-").tempdir().unwrap();
    let point = dir.path().join("m");
    let input = std::fs::File::open(source).unwrap();
    let out = wfs().arg("mount").arg("-").arg(&point).stdin(Stdio::from(input)).output().unwrap();
    assert!(out.status.success(), "stdin mount: {}", String::from_utf8_lossy(&out.stderr));
    Mount { dir, point }
}

#[test]
fn standard_input_gives_the_same_tensors() {
    for rel in ["safetensors/all_dtypes.safetensors", "numpy/compressed.npz"] {
        let piped = mount_stdin(&fixture(rel));
        check_fixture(&piped, rel);
    }
    // A lone .npy has no file name on standard input.
    let piped = mount_stdin(&fixture("numpy/matrix.npy"));
    assert_eq!(tsv_rows(&piped)[0][4], "array");
}

// ---- real files (../shared/real-models) -------------------------------------------------

/// Each oracle tensor, found by its own name in tensors.tsv, has the oracle's dtype, shape and
/// bytes; the mount lists nothing else.
fn check_real_item(root: &Path, item: &str) {
    let oracle = load_json(&root.join(format!("{item}.oracle.json")));
    for part in oracle["parts"].as_array().unwrap() {
        let source = root.join(item).join(part["path"].as_str().unwrap());
        let mount = Mount::new(&source, &[]);
        check_part_tensors(&mount, item, part);
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        let metadata = &part["metadata"];
        match part["kind"].as_str().unwrap() {
            "safetensors" if part["format"] == "safetensors-sharded" => {
                assert_eq!(info["metadata"], metadata["index"], "{item}: index metadata");
                for shard in info["shards"].as_array().unwrap() {
                    assert_eq!(shard["metadata"], metadata["shards"][shard["file"].as_str().unwrap()], "{item}: shard metadata");
                }
            }
            "safetensors" if metadata.is_null() => assert!(info.get("metadata").is_none(), "{item}"),
            "safetensors" => assert_eq!(&info["metadata"], metadata, "{item}: __metadata__"),
            "npy" => {
                assert_eq!(info["descr"], metadata["descr"]);
                assert_eq!(info["fortran_order"], metadata["fortran_order"]);
            }
            _ => {}
        }
    }
}

#[test]
fn real_safetensors_and_numpy_files_match_their_oracles() {
    let Some(root) = real_models() else { return };
    let families = ["st_", "npz_", "npy_"];
    let items: Vec<String> = real_items(&root).into_iter().map(|(item, _)| item).filter(|i| families.iter().any(|f| i.starts_with(f))).collect();
    assert!(items.len() >= 5, "{items:?}");
    for item in &items {
        check_real_item(&root, item);
    }
}

fn is_mounted(point: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == point.to_str())
}

#[test]
fn real_damaged_safetensors_is_refused_cleanly() {
    let Some(root) = real_models() else { return };
    let source = root.join("bad/bad_safetensors_offset_past_eof/model-damaged.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    let out = wfs().arg("mount").arg(&source).arg(&point).output().unwrap();
    assert_refused(&out, "safetensors: TensorInvalidInfo: tensor \"blk_0_attn_v_weight.f32\"");
    assert!(!is_mounted(&point));
}

// ---- hostile files ----------------------------------------------------------------------

/// A safetensors file from a header (JSON text) and a data buffer.
fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    [&(header.len() as u64).to_le_bytes()[..], header.as_bytes(), data].concat()
}

/// `wfs info SOURCE` (the mount's code path without FUSE) with its peak RSS in KiB.
fn info_measured(source: &Path) -> (Output, u64) {
    let out = wfs().arg("info").arg(source).output().unwrap();
    // The largest peak RSS of any child reaped so far: an upper bound shared with the test's
    // other children.
    // SAFETY: a zeroed rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid place for getrusage's answer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    (out, usage.ru_maxrss as u64)
}

const MAX_RSS_KIB: u64 = 1 << 20;

#[test]
fn hostile_safetensors_are_refused_naming_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let f32x2 = r#""dtype":"F32","shape":[2]"#;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("header past the end", [&1000u64.to_le_bytes()[..], b"{}"].concat(), "InvalidHeaderLength: header length 1000"),
        ("header too large", [&(1u64 << 40).to_le_bytes()[..], b"{\"a\":1}"].concat(), "HeaderTooLarge"),
        ("truncated data", safetensors_bytes(&format!(r#"{{"a":{{{f32x2},"data_offsets":[0,8]}}}}"#), &[0; 5]), "MetadataIncompleteBuffer"),
        ("trailing bytes", safetensors_bytes(&format!(r#"{{"a":{{{f32x2},"data_offsets":[0,8]}}}}"#), &[0; 12]), "MetadataIncompleteBuffer"),
        (
            "overlap",
            safetensors_bytes(&format!(r#"{{"a":{{{f32x2},"data_offsets":[0,8]}},"b":{{{f32x2},"data_offsets":[4,12]}}}}"#), &[0; 12]),
            "InvalidOffset: tensor \"b\"",
        ),
        ("gap at the start", safetensors_bytes(&format!(r#"{{"a":{{{f32x2},"data_offsets":[4,12]}}}}"#), &[0; 12]), "InvalidOffset: tensor \"a\""),
        ("end before begin", safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}"#, &[]), "InvalidOffset"),
        ("offset past the end", safetensors_bytes(&format!(r#"{{"a":{{{f32x2},"data_offsets":[0,4096]}}}}"#), &[0; 8]), "TensorInvalidInfo"),
        ("size disagrees with shape", safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]), "TensorInvalidInfo"),
        (
            "shape overflows",
            safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#, &[0; 8]),
            "ValidationOverflow",
        ),
        ("float6 of 2 elements", safetensors_bytes(r#"{"a":{"dtype":"F6_E2M3","shape":[2],"data_offsets":[0,1]}}"#, &[0]), "MisalignedSlice"),
        ("unknown dtype", safetensors_bytes(r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}}"#, &[0]), "InvalidHeaderDeserialization"),
        ("metadata not strings", safetensors_bytes(r#"{"__metadata__":{"a":1}}"#, &[]), "InvalidHeaderDeserialization: __metadata__"),
        ("NUL padding", safetensors_bytes("{}\0\0\0\0\0\0", &[]), "InvalidHeaderDeserialization"),
        ("not UTF-8", safetensors_bytes("{\"\u{e9}\":{}}", &[]).iter().map(|&b| if b == 0xC3 { 0xFF } else { b }).collect(), "InvalidHeader: "),
        ("negative offset", safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}"#, &[]), "InvalidHeaderDeserialization"),
        (
            // The last value of a duplicated name wins (as in the reference reader); the dropped
            // entry leaves a gap.
            "duplicate name",
            safetensors_bytes(&format!(r#"{{"a":{{{f32x2},"data_offsets":[0,8]}},"a":{{{f32x2},"data_offsets":[8,16]}}}}"#), &[0; 16]),
            "InvalidOffset: tensor \"a\"",
        ),
    ];
    for (what, bytes, needle) in cases {
        let source = tmp.path().join("x.safetensors");
        std::fs::write(&source, &bytes).unwrap();
        let (out, peak) = info_measured(&source);
        assert_refused(&out, &format!("safetensors: {needle}"));
        assert!(peak < MAX_RSS_KIB, "{what}: {peak} KiB");
    }
    // A header with 10^5 tensors of zero elements mounts.
    let many: Vec<String> = (0..100_000).map(|i| format!(r#""t.{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#)).collect();
    let source = tmp.path().join("many.safetensors");
    std::fs::write(&source, safetensors_bytes(&format!("{{{}}}", many.join(",")), &[])).unwrap();
    let (out, peak) = info_measured(&source);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(peak < MAX_RSS_KIB);
    // Hostile names stay inside the mount.
    let names = r#"{"../../etc/passwd":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a/./..//b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"x\ny":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}"#;
    let source = tmp.path().join("names.safetensors");
    std::fs::write(&source, safetensors_bytes(names, &[1, 2, 3])).unwrap();
    let mount = Mount::new(&source, &[]);
    let rows = tsv_rows(&mount);
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let path = mount.path(&row[0]);
        assert!(path.canonicalize().unwrap().starts_with(mount.point.canonicalize().unwrap()), "{}", row[0]);
        assert_eq!(std::fs::read(path.with_extension("raw")).unwrap().len(), 1);
    }
}

#[test]
fn hostile_sharded_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let shard = |name: &str, tensors: &[&str]| {
        let entries: Vec<String> = tensors.iter().enumerate().map(|(i, t)| format!(r#""{t}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#, i + 1)).collect();
        std::fs::write(tmp.path().join(name), safetensors_bytes(&format!("{{{}}}", entries.join(",")), &vec![7; tensors.len()])).unwrap();
    };
    shard("s1.safetensors", &["a", "b"]);
    shard("s2.safetensors", &["c"]);
    // A shard the index does not name is not part of the model.
    let source = tmp.path().join("model.safetensors.index.json");
    std::fs::write(&source, r#"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}"#).unwrap();
    assert!(info_measured(&source).0.status.success());
    let cases = [
        (r#"{"weight_map":{"a":"s1.safetensors","c":"s2.safetensors"}}"#, "shard s1.safetensors holds tensor \"b\", but the index's weight_map does not list it"),
        (r#"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors","d":"s2.safetensors"}}"#, "tensor \"d\" in shard s2.safetensors, which does not hold it"),
        (r#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s2.safetensors"}}"#, "the index puts it in s2.safetensors"),
        (r#"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"../s2.safetensors"}}"#, "is not a file beside the index"),
        (r#"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"missing.safetensors"}}"#, "shard missing.safetensors: No such file or directory"),
    ];
    for (index, needle) in cases {
        let source = tmp.path().join("model.safetensors.index.json");
        std::fs::write(&source, index).unwrap();
        let (out, _) = info_measured(&source);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0));
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}

/// A `.npy` file: the header dict padded as numpy pads it, then `data`.
fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.as_bytes().to_vec();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    [&b"\x93NUMPY\x01\x00"[..], &(header.len() as u16).to_le_bytes(), &header, data].concat()
}

#[test]
fn hostile_npy_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1152921504606846976,), }", &[0; 8]), "needs more bytes"),
        (npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", &[0; 8]), "needs more bytes"),
        (npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", &[]), "too large"),
        (npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", &[]), "unexpected byte"),
        (npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", &[0; 8]), "shape is not a tuple"),
        (npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", &[0; 8]), "unexpected key"),
        (npy_bytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", &[0; 8]), "twice"),
        (npy_bytes("{'descr': '<f4', 'fortran_order': False, }", &[0; 8]), "no shape"),
        (npy_bytes(&format!("{{'descr': {}'<f4'{}, 'fortran_order': False, 'shape': (2,), }}", "[".repeat(5000), "]".repeat(5000)), &[0; 8]), "nests too deeply"),
        (npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", &[0; 8]), "header"),
        (npy_bytes("{'descr': 'xyz', 'fortran_order': False, 'shape': (2,), }", &[0; 8]), "descr"),
        (b"\x93NUMPY\x01\x00\xff\xff{".to_vec(), "runs past the end"),
        (b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{".to_vec(), "wfs reads at most"),
        (b"\x93NUMPY\x07\x00\x10\x00{}            ".to_vec(), "unknown .npy version 7.0"),
        (b"\x93NUMPY\x01".to_vec(), "truncated"),
    ];
    for (bytes, needle) in cases {
        let source = tmp.path().join("x.npy");
        std::fs::write(&source, &bytes).unwrap();
        let (out, peak) = info_measured(&source);
        assert_refused(&out, needle);
        assert!(peak < MAX_RSS_KIB, "{needle}: {peak} KiB");
    }
}

/// Peak RSS (KiB) of the process `pid`, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

#[test]
fn npz_zip_bomb_reads_within_the_cache() {
    // 1 GiB of zeros deflates to about 1 MiB; its tensor must read within --cache-size.
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("bomb.npz");
    let elements: u64 = 1 << 28;
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&source).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
            .large_file(true);
        zip.start_file("zeros.npy", options).unwrap();
        zip.write_all(&npy_bytes(&format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({elements},), }}"), &[])).unwrap();
        let block = vec![0u8; 1 << 20];
        for _ in 0..((elements * 4) >> 20) {
            zip.write_all(&block).unwrap();
        }
        zip.finish().unwrap();
    }
    let point = tmp.path().join("m");
    let mut child = wfs().arg("mount").arg(&source).arg(&point).args(["-f", "--cache-size", "16M"]).stderr(Stdio::null()).spawn().unwrap();
    let _guard = UnmountGuard(point.clone());
    let start = std::time::Instant::now();
    while !point.join("info.json").exists() {
        assert!(start.elapsed().as_secs() < 30 && child.try_wait().unwrap().is_none(), "bomb.npz did not mount");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The last 4 KiB: everything before is inflated (and dropped) to reach them.
    let file = std::fs::File::open(point.join("tensors/zeros.raw")).unwrap();
    let mut tail = vec![1u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut tail, elements * 4 - 4096).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    let peak = peak_rss_kib(child.id());
    assert!(peak < 200 << 10, "daemon peak RSS {peak} KiB for a 16 MiB cache");
    drop(file);
    drop(_guard);
    let _ = child.wait();
}

/// The fuzz targets' entry points over deterministic mutations of the fixtures' headers (every
/// header byte replaced by a few hostile values, every truncation of the header): no panic, and
/// every accepted input reads back and builds a safe tree. The fuzzers explore further.
#[test]
fn mutated_headers_never_panic() {
    let check = |model: wfs::model::Model| {
        wfs::fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "mutated");
        wfs::fuzzing::check_tree(&tree).unwrap();
    };
    let mutations = |bytes: &[u8], header: usize| -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = (0..=header.min(bytes.len())).map(|n| bytes[..n].to_vec()).collect();
        for at in 0..header.min(bytes.len()) {
            for value in [0x00, 0xFF, b'{', b']', b'9', b',', b'"', b'\''] {
                let mut m = bytes.to_vec();
                m[at] = value;
                out.push(m);
            }
        }
        out
    };
    for rel in ["safetensors/all_dtypes.safetensors", "safetensors/float6.safetensors"] {
        let bytes = std::fs::read(fixture(rel)).unwrap();
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for input in mutations(&bytes, header) {
            if let Ok(model) = wfs::fuzzing::open_format("safetensors", &input) {
                check(model);
            }
        }
    }
    for rel in ["numpy/fortran_be.npy", "numpy/bytes.npy"] {
        let bytes = std::fs::read(fixture(rel)).unwrap();
        for input in mutations(&bytes, 128) {
            for model in wfs::fuzzing::numpy(&input, 1 << 16).into_iter().flatten() {
                check(model);
            }
        }
    }
}
