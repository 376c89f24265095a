//! JAX checkpoints (tests/fixtures/gen/make_jax.py): Flax msgpack files written by flax and
//! checked against what `flax.serialization.msgpack_restore` read back (every tensor's bytes,
//! dtype, shape and name, its `.npy` through numpy, the non-array leaves in `object.json`); the
//! real t5x checkpoint against its oracle; and hostile msgpack refused in one line or mounted
//! with the damage listed.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// Every tensor of a fixture's `.expect.json`, found by its path in `tensors.tsv`, against the
/// oracle (bytes, dtype, shape, name); no other tensor is listed; every native-dtype `.npy`
/// loads in numpy.
fn check_fixture(mount: &Mount, oracle: &str) -> Value {
    let expect = load_json(&fixture(&format!("{oracle}.expect.json")));
    let rows = tsv_rows(mount);
    let tensors = expect["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), tensors.len(), "{oracle}: tensor count");
    for t in tensors {
        let (name, path) = (t["name"].as_str().unwrap(), t["path"].as_str().unwrap());
        let row = rows.iter().find(|r| r[0] == format!("{path}.npy")).unwrap_or_else(|| panic!("{oracle}: no row for {path}"));
        assert_eq!(row[4], name, "{oracle}: the name of {path}");
        check_tensor(mount, path, t);
        assert_eq!(xattr_text(&mount.path(&format!("{path}.npy")), "user.wfs.name"), name);
    }
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], expect["format"], "{oracle}: format");
    check_with_numpy(mount, &fixture(&format!("{oracle}.expect.npz")));
    expect
}

#[test]
fn flax_msgpack_every_dtype_with_scalars_in_object_json() {
    let mount = Mount::new(&fixture("jax/dtypes.msgpack"), &[]);
    let expect = check_fixture(&mount, "jax/dtypes.msgpack");
    let object: Value = serde_json::from_slice(&mount.read("object.json")).unwrap();
    for (key, value) in expect["object"].as_object().unwrap() {
        assert_eq!(&object[key], value, "object.json {key}");
    }
    assert_eq!(object["params"]["Dense_0"]["kernel"]["__tensor__"], "params/Dense_0/kernel");
    // Served in place: the bytes lie in the file at the offset the xattrs give.
    let raw = mount.path("tensors/dtypes/float64.raw");
    let offset: usize = xattr_text(&raw, "user.wfs.offset").parse().unwrap();
    let file = std::fs::read(fixture("jax/dtypes.msgpack")).unwrap();
    assert_eq!(&file[offset..offset + 48], std::fs::read(&raw).unwrap().as_slice());
}

#[test]
fn flax_msgpack_chunked_arrays_are_reassembled() {
    let mount = Mount::new(&fixture("jax/chunked.msgpack"), &[]);
    check_fixture(&mount, "jax/chunked.msgpack");
    // A read across chunk boundaries, from an offset inside one.
    let whole = mount.read("tensors/params/big.raw");
    let file = std::fs::File::open(mount.path("tensors/params/big.raw")).unwrap();
    let mut part = vec![0u8; 50];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut part, 13).unwrap();
    assert_eq!(part, whole[13..63]);
}

#[test]
fn flax_msgpack_real_t5x_checkpoint_matches_its_oracle() {
    let Some(root) = real_models() else { return };
    let item = "flax_msgpack_t5x_test_t5_tiny_checkpoint_0";
    let oracle = load_json(&root.join(format!("{item}.oracle.json")));
    let part = &oracle["parts"][0];
    let mount = Mount::new(&root.join(item).join(part["path"].as_str().unwrap()), &[]);
    let rows = check_part_tensors(&mount, item, part);
    assert_eq!(rows.len(), 261);
    let object: Value = serde_json::from_slice(&mount.read("object.json")).unwrap();
    for (key, value) in part["metadata"]["non_tensor_leaves"].as_object().unwrap() {
        assert_eq!(&object[key], value, "object.json {key}");
    }
}

/// A msgpack str header for `s`.
fn str_(s: &str) -> Vec<u8> {
    assert!(s.len() < 32);
    [vec![0xa0 | s.len() as u8], s.as_bytes().to_vec()].concat()
}

/// An ndarray ext (fixext/ext8, type 1) of `[shape, dtype, data]`.
fn ndarray(shape: &[u8], dtype: &str, data: &[u8]) -> Vec<u8> {
    let mut inner = vec![0x93, 0x90 | shape.len() as u8];
    inner.extend_from_slice(shape);
    inner.extend(str_(dtype));
    inner.extend([0xc4, data.len() as u8]);
    inner.extend_from_slice(data);
    [vec![0xc7, inner.len() as u8, 1], inner].concat()
}

fn refused(bytes: &[u8], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.msgpack");
    std::fs::write(&path, bytes).unwrap();
    let out: Output = Mount::try_new(&path, &[]).err().unwrap_or_else(|| panic!("{needle}: mounted"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("wfs: ") && err.contains(needle), "{err:?} lacks {needle:?}");
}

fn mounted(bytes: &[u8], dir: &Path) -> Mount {
    let path = dir.join("odd.msgpack");
    std::fs::write(&path, bytes).unwrap();
    Mount::new(&path, &[])
}

#[test]
fn hostile_msgpack_is_refused_in_one_line_or_listed_as_damage() {
    let good = [vec![0x81], str_("w"), ndarray(&[2], "float32", &[0; 8])].concat();
    // Truncated anywhere: one line, never a hang.
    for cut in [2, 5, good.len() - 1] {
        refused(&good[..cut], "msgpack data ends early");
    }
    refused(&[good.clone(), vec![0]].concat(), "bytes after the msgpack object");
    // An ext type Flax never writes.
    let mut other = good.clone();
    other[5] = 9;
    refused(&other, "msgpack ext type 9");
    // A map claiming 2^32-1 entries in a few bytes, and maps nested past any checkpoint's depth.
    refused(&[vec![0xdf, 0xff, 0xff, 0xff, 0xff], str_("a"), vec![1]].concat(), "ends early");
    let mut deep = Vec::new();
    for _ in 0..100 {
        deep.extend([0x81]);
        deep.extend(str_("a"));
    }
    deep.push(1);
    refused(&deep, "nested deeper than 64 levels");
    // An array whose data disagree with its shape, and an unknown dtype: the rest mounts.
    let dir = tempfile::tempdir().unwrap();
    let odd = [vec![0x83], str_("w"), good[3..].to_vec(), str_("short"), ndarray(&[3], "float32", &[0; 8]), str_("obj"), ndarray(&[1], "object", &[0; 8])].concat();
    let mount = mounted(&odd, dir.path());
    assert_eq!(mount.read("tensors/w.raw"), vec![0; 8]);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    let skipped: Vec<&str> = info["skipped"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(skipped, ["short", "obj"]);
}

/// zarr v2 and v3 groups written by zarr-python: every codec (zstd, zlib, gzip, blosc with lz4,
/// zstd and zlib and each shuffle, crc32c, bytes in both byte orders, transpose, sharding), F
/// order, `/` and `.` keys, missing chunks (the fill value), partial edge chunks, a scalar and a
/// nested group: each array equals what zarr reads.
#[test]
fn zarr_v2_and_v3_stores_every_codec() {
    for store in ["jax/v2.zarr", "jax/v3.zarr"] {
        let mount = Mount::new(&fixture(store), &[]);
        check_fixture(&mount, store);
    }
}

/// Orbax checkpoints written by CheckpointManager (two steps, each a part), one zarr array per
/// leaf in zarr v2 and zarr3, a leaf cut into several chunks: each tensor equals what orbax
/// restores; the step and item directories mount alone too; the metadata is in metadata.json.
#[test]
fn orbax_per_array_zarr_checkpoints() {
    for name in ["orbax_zarr2", "orbax_zarr3"] {
        let source = format!("jax/{name}");
        let mount = Mount::new(&fixture(&source), &[]);
        check_fixture(&mount, &source);
        let metadata: Value = serde_json::from_slice(&mount.read("2/metadata.json")).unwrap();
        assert_eq!(metadata["_METADATA"]["use_ocdbt"], false);
        assert!(metadata["_CHECKPOINT_METADATA"].is_object());
        assert_eq!(metadata["_strings.json"]["name"], "tiny");
        for below in ["2", "2/default"] {
            let mount = Mount::new(&fixture(&format!("{source}/{below}")), &[]);
            let kernel = mount.read("tensors/params/Dense_0/kernel.raw");
            let whole = Mount::new(&fixture(&source), &[]);
            assert_eq!(kernel, whole.read("2/tensors/params/Dense_0/kernel.raw"), "{source}/{below}");
        }
    }
}

/// Writes a zarr v2 array directory `name` of `dir` with this `.zarray` and chunks.
fn zarr_v2(dir: &Path, name: &str, zarray: &str, chunks: &[(&str, Vec<u8>)]) {
    let array = dir.join(name);
    std::fs::create_dir_all(&array).unwrap();
    std::fs::write(array.join(".zarray"), zarray).unwrap();
    for (key, bytes) in chunks {
        std::fs::write(array.join(key), bytes).unwrap();
    }
}

/// Hostile zarr stores: a chunk that inflates beyond its declared size fails its read (EIO),
/// 10^9 declared chunks mount at once and read as the fill value, absurd chunk shapes and
/// unknown codecs are listed as skipped, a `..` key in Orbax metadata reaches nothing outside.
#[test]
fn hostile_zarr_stores_fail_reads_or_list_the_damage() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join(".zgroup"), r#"{"zarr_format": 2}"#).unwrap();
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&[0u8; 100_000]).unwrap();
    let meta = |shape: &str, chunks: &str, compressor: &str| {
        format!(r#"{{"zarr_format": 2, "shape": {shape}, "chunks": {chunks}, "dtype": "|u1", "compressor": {compressor}, "fill_value": 7, "order": "C", "filters": null}}"#)
    };
    zarr_v2(&store, "bomb", &meta("[8]", "[8]", r#"{"id": "zlib"}"#), &[("0", zlib.finish().unwrap())]);
    zarr_v2(&store, "huge", &meta("[1000000000]", "[1]", "null"), &[]);
    zarr_v2(&store, "absurd", &meta("[10]", "[1099511627776]", "null"), &[]);
    zarr_v2(&store, "unknown", &meta("[10]", "[10]", r#"{"id": "lzma"}"#), &[]);
    let mount = Mount::new(&store, &[]);
    let err = std::fs::read(mount.path("tensors/bomb.raw")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let huge = mount.path("tensors/huge.raw");
    assert_eq!(std::fs::metadata(&huge).unwrap().len(), 1_000_000_000);
    let mut head = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&huge).unwrap(), &mut head, 123_456_789).unwrap();
    assert!(head.iter().all(|&b| b == 7));
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    let skipped: Vec<(&str, &str)> = info["skipped"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e["reason"].as_str().unwrap())).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].0 == "absurd" && skipped[0].1.contains("over 2147483648 bytes"), "{skipped:?}");
    assert!(skipped[1].0 == "unknown" && skipped[1].1.contains("lzma"), "{skipped:?}");

    // Orbax metadata naming `..`: the key is never looked up outside the checkpoint.
    let item = dir.path().join("item");
    std::fs::create_dir_all(&item).unwrap();
    zarr_v2(dir.path(), "w", &meta("[2]", "[2]", "null"), &[("0", vec![1, 2])]);
    zarr_v2(&item, "ok", &meta("[2]", "[2]", "null"), &[("0", vec![3, 4])]);
    let leaf = |key: &str| format!(r#""{key}": {{"key_metadata": [{{"key": "{key}", "key_type": 2}}], "value_metadata": {{"value_type": "np.ndarray"}}}}"#);
    std::fs::write(item.join("_METADATA"), format!(r#"{{"tree_metadata": {{{}, {}, {}}}, "use_ocdbt": false}}"#, leaf(".."), leaf("../w"), leaf("ok"))).unwrap();
    let mount = Mount::new(&item, &[]);
    assert_eq!(mount.read("tensors/ok.raw"), [3, 4]);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["tensors"], 1);
    let skipped: Vec<&str> = info["skipped"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(skipped, ["..", "../w"]);
}
