//! GGUF sources (tests/fixtures/gen/make_gguf.py): fixtures written by gguf-py, mounted for real
//! and read with cat, dd and numpy against the values gguf-py's `dequantize` (or, for the types
//! it lacks, numpy formulas) gave at generation time; hostile files built here byte by byte; and
//! the GGUF items of ../shared/real-models against their oracles.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn expect(name: &str) -> Value {
    load_json(&fixture(&format!("gguf/{name}.expect.json")))
}

/// The data section of a `.npy` file of `data_len` bytes.
fn npy_data(npy: &[u8], data_len: usize) -> &[u8] {
    assert!(npy.len() >= data_len + 64, "npy of {} bytes", npy.len());
    &npy[npy.len() - data_len..]
}

fn shape_of(t: &Value) -> Vec<u64> {
    t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect()
}

/// Every tensor of a fixture against its oracle: .raw bytes, .shape, .dtype, the tensors.tsv row,
/// the name attribute, and the float32 values in .npy (sha256) or the absence of .npy.
fn check_tensors(mount: &Mount, expect: &Value) {
    let tsv = mount.text("tensors.tsv");
    for t in expect["tensors"].as_array().unwrap() {
        let (path, name, dtype) = (t["path"].as_str().unwrap(), t["name"].as_str().unwrap(), t["dtype"].as_str().unwrap());
        let raw = mount.read(&format!("{path}.raw"));
        assert_eq!(sha256_hex(&raw), t["sha256"].as_str().unwrap(), "bytes of {name}");
        let shape: Vec<String> = shape_of(t).iter().map(u64::to_string).collect();
        assert_eq!(mount.text(&format!("{path}.shape")), format!("{}\n", shape.join(",")), "shape of {name}");
        assert_eq!(mount.text(&format!("{path}.dtype")), format!("{dtype}\n"), "dtype of {name}");
        let npy = mount.path(&format!("{path}.npy"));
        let file = match t.get("npy_sha256") {
            Some(want) => {
                let itemsize = if t["npy_dtype"] == "float32" { 4 } else { raw.len() / shape_of(t).iter().product::<u64>() as usize };
                let count = shape_of(t).iter().product::<u64>() as usize;
                let bytes = std::fs::read(&npy).unwrap();
                assert_eq!(sha256_hex(npy_data(&bytes, count * itemsize)), want.as_str().unwrap(), "values of {name}");
                "npy"
            }
            None => {
                assert!(!npy.exists(), "{name} has a .npy");
                "raw"
            }
        };
        let row = format!("{path}.{file}\t{dtype}\t{}\t{}\t{name}\n", shape.join(","), raw.len());
        assert!(tsv.contains(&row), "tensors.tsv lacks {row:?}");
        assert_eq!(xattr_text(&mount.path(&format!("{path}.raw")), "user.wfs.name"), name);
    }
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], "gguf");
    assert_eq!(info["tensors"], expect["tensors"].as_array().unwrap().len());
    assert_eq!(info["gguf_version"], expect["gguf_version"]);
    assert_eq!(info["alignment"], expect["alignment"]);
    assert_eq!(info["byte_order"], expect.get("byte_order").cloned().unwrap_or("little-endian".into()));
    for (key, value) in expect["info"].as_object().unwrap() {
        assert_eq!(&info[key], value, "info.json {key}");
    }
    let not_decoded: Vec<&str> = info["not_decoded"].as_array().map_or(Vec::new(), |a| a.iter().map(|e| e["name"].as_str().unwrap()).collect());
    let want: Vec<&str> = expect["not_decoded"].as_array().map_or(Vec::new(), |a| a.iter().map(|e| e.as_str().unwrap()).collect());
    assert_eq!(not_decoded, want);
}

fn mount_fixture(name: &str, args: &[&str]) -> (Mount, Value) {
    let mount = Mount::new(&fixture(&format!("gguf/{name}")), args);
    let expect = expect(name);
    check_tensors(&mount, &expect);
    check_with_numpy(&mount, &fixture(&format!("gguf/{name}.expect.npz")));
    if let Some(meta) = expect.get("metadata") {
        let got: Value = serde_json::from_slice(&mount.read("metadata.json")).unwrap();
        assert_eq!(&got, meta, "metadata.json");
    }
    (mount, expect)
}

/// Undoes the escaping of `metadata/<key>.txt` lines (`\\`, `\n`, `\r`).
fn unescape(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            other => panic!("bad escape {other:?} in {line:?}"),
        }
    }
    out
}

#[test]
fn every_type_and_metadata_value_from_gguf_py() {
    let (mount, expect) = mount_fixture("all_types.gguf", &[]);
    // Every array also has its own file, one entry per line.
    for (key, values) in expect["metadata_arrays"].as_object().unwrap() {
        let text = mount.text(&format!("metadata/{key}.txt"));
        let lines: Vec<&str> = text.strip_suffix('\n').unwrap().split('\n').collect();
        let values = values.as_array().unwrap();
        assert_eq!(lines.len(), values.len(), "{key}");
        for (line, want) in lines.iter().zip(values) {
            match want {
                Value::String(s) if !matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => assert_eq!(&unescape(line), s, "{key}"),
                // Floats in their shortest form: exact as f64, or as f32 for float32 arrays (compared
                // as f32: serde_json's default parser may be one f64 ulp off).
                Value::Number(n) if n.is_f64() => {
                    let want = n.as_f64().unwrap();
                    assert!(line.parse::<f64>() == Ok(want) || line.parse::<f32>() == Ok(want as f32), "{key}: {line} != {want}");
                }
                other => assert_eq!(&serde_json::from_str::<Value>(line).unwrap(), other, "{key}"),
            }
        }
    }
    // One line per token even for tokens holding newlines: `wc -l` counts the vocabulary.
    let wc = Command::new("wc").arg("-l").arg(mount.path("metadata/tokenizer.ggml.tokens.txt")).output().unwrap();
    let tokens = expect["metadata"]["tokenizer.ggml.tokens"].as_array().unwrap().len();
    assert!(String::from_utf8_lossy(&wc.stdout).starts_with(&format!("{tokens} ")));
}

#[test]
fn custom_alignment() {
    mount_fixture("align64.gguf", &[]);
}

#[test]
fn big_endian_file() {
    mount_fixture("big_endian.gguf", &[]);
}

#[test]
fn types_gguf_py_cannot_write_and_unknown_types() {
    let (mount, _) = mount_fixture("handmade.gguf", &[]);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert!(info["not_decoded"][0]["reason"].as_str().unwrap().contains("unknown"));
    assert_eq!(xattr_text(&mount.path("tensors/odd/unknown.raw"), "user.wfs.storage"), "plain");
}

#[test]
fn gguf_versions_1_and_2() {
    for name in ["v1.gguf", "v2.gguf"] {
        let (mount, _) = mount_fixture(name, &[]);
        assert_eq!(mount.text("metadata/tokenizer.ggml.tokens.txt"), "a\nb\\nc\n");
    }
}

/// Random ranges of every quantized `.npy` read with dd equal the same bytes of the whole file,
/// whose values were checked against the oracle; with a cache smaller than one decode unit, and
/// 4 readers at once.
#[test]
fn random_ranges_and_concurrent_readers_with_a_tiny_cache() {
    let mount = Mount::new(&fixture("gguf/all_types.gguf"), &["--cache-size", "4K"]);
    let expect = expect("all_types.gguf");
    check_tensors(&mount, &expect);
    let paths: Vec<String> = expect["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["path"].as_str().unwrap().starts_with("tensors/quant"))
        .map(|t| format!("{}.npy", t["path"].as_str().unwrap()))
        .collect();
    let mut seed = 14u64;
    let mut next = move |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    for path in &paths {
        let whole = mount.read(path);
        for _ in 0..4 {
            let (skip, count) = (next(whole.len()), 1 + next(5000));
            let out = Command::new("dd")
                .arg(format!("if={}", mount.path(path).display()))
                .args(["iflag=skip_bytes,count_bytes", "bs=4096", "status=none", &format!("skip={skip}"), &format!("count={count}")])
                .output()
                .unwrap();
            assert_eq!(out.stdout, whole[skip..(skip + count).min(whole.len())], "{path} at {skip}+{count}");
        }
    }
    let point = mount.point.clone();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (paths, point) = (paths.clone(), point.clone());
            std::thread::spawn(move || {
                for p in paths.iter().cycle().skip(t * 3).take(paths.len()) {
                    let bytes = std::fs::read(point.join(p)).unwrap();
                    let cmp = Command::new("cmp").arg(point.join(p)).arg("-").stdin(std::process::Stdio::piped()).spawn();
                    let mut cmp = cmp.unwrap();
                    std::io::Write::write_all(cmp.stdin.as_mut().unwrap(), &bytes).unwrap();
                    assert!(cmp.wait().unwrap().success(), "{p}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// A v3 little-endian GGUF: `kvs` and `infos` already encoded, counts as given (so hostile
/// counts can be written), then the data at the next multiple of 32.
fn gguf(tensor_count: u64, kv_count: u64, kvs: &[Vec<u8>], infos: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&tensor_count.to_le_bytes());
    out.extend_from_slice(&kv_count.to_le_bytes());
    out.extend(kvs.concat());
    out.extend(infos.concat());
    out.resize(out.len().div_ceil(32) * 32, 0);
    out.extend_from_slice(data);
    out
}

fn string(s: &str) -> Vec<u8> {
    [&(s.len() as u64).to_le_bytes()[..], s.as_bytes()].concat()
}

fn kv(key: &str, kind: u32, value: &[u8]) -> Vec<u8> {
    [string(key), kind.to_le_bytes().to_vec(), value.to_vec()].concat()
}

fn info(name: &str, dims: &[u64], kind: u32, offset: u64) -> Vec<u8> {
    let mut out = string(name);
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `wfs info` on a hostile file: a one-line error and exit code 4, quickly.
fn rejected(path: &Path) -> String {
    let start = std::time::Instant::now();
    let out: Output = wfs().arg("info").arg(path).output().unwrap();
    assert!(start.elapsed().as_secs() < 10, "{} took {:?}", path.display(), start.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(4), "{}: {stderr}", path.display());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn hostile_headers_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let f32_info = |name: &str, offset| info(name, &[4], 0, offset);
    let huge = 1u64 << 62;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("offset_past_end", gguf(1, 0, &[], &[f32_info("w", 1 << 40)], &[0; 16]), "past the end"),
        ("data_past_end", gguf(1, 0, &[], &[f32_info("w", 0)], &[0; 8]), "past the end"),
        ("thousand_dims", gguf(1, 0, &[], &[info("w", &[1; 1000], 0, 0)], &[0; 32]), "1000 dimensions"),
        ("overflowing_dims", gguf(1, 0, &[], &[info("w", &[1 << 40, 1 << 40], 0, 0)], &[0; 32]), "overflow"),
        ("string_2_62", gguf(0, 1, &[[&huge.to_le_bytes()[..], b"key"].concat()], &[], &[]), "past the end"),
        ("value_string_2_62", gguf(0, 1, &[kv("k", 8, &huge.to_le_bytes())], &[], &[]), "past the end"),
        ("array_2_62", gguf(0, 1, &[kv("k", 9, &[&5u32.to_le_bytes()[..], &huge.to_le_bytes()].concat())], &[], &[]), "cannot fit"),
        ("string_array_2_62", gguf(0, 1, &[kv("k", 9, &[&8u32.to_le_bytes()[..], &huge.to_le_bytes()].concat())], &[], &[]), "cannot fit"),
        ("tensor_count_2_62", gguf(huge, 0, &[], &[], &[]), "cannot fit"),
        ("kv_count_2_62", gguf(0, huge, &[], &[], &[]), "cannot fit"),
        ("unknown_value_type", gguf(0, 1, &[kv("k", 13, &[0; 8])], &[], &[]), "unknown value type"),
        ("alignment_3", gguf(0, 1, &[kv("general.alignment", 4, &3u32.to_le_bytes())], &[], &[]), "power of two"),
        ("alignment_0", gguf(0, 1, &[kv("general.alignment", 4, &0u32.to_le_bytes())], &[], &[]), "power of two"),
        ("partial_block_rows", gguf(1, 0, &[], &[info("q", &[33], 8, 0)], &[0; 64]), "blocks"),
        ("version_4", [b"GGUF".as_slice(), &4u32.to_le_bytes(), &[0; 16]].concat(), "version 4"),
        ("truncated_header", b"GGUF\x03\x00\x00\x00\x01".to_vec(), "past the end"),
    ];
    let mut nested = Vec::new();
    for _ in 0..6 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    nested.extend_from_slice(&[0; 8]);
    let nested = gguf(0, 1, &[kv("k", 9, &nested[4..])], &[], &[]);
    // Four million one-byte values: more than a file may hold.
    let many = [&0u32.to_le_bytes()[..], &(5u64 << 20).to_le_bytes(), &vec![7u8; 5 << 20]].concat();
    let many = gguf(0, 1, &[kv("k", 9, &many)], &[], &[]);
    for (name, bytes, why) in cases.into_iter().chain([("nested_arrays", nested, "nested"), ("many_values", many, "more than")]) {
        let stderr = rejected(&write_temp(dir.path(), name, &bytes));
        assert!(stderr.contains(why), "{name}: {stderr}");
    }
}

/// Layouts ggml would refuse but that are safe to serve: overlapping tensors, an unaligned
/// offset, an unknown type last in the file, hostile names. They mount, and read what they say.
#[test]
fn hostile_layouts_mount_as_a_safe_tree() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..64u8).collect();
    let infos = [
        info("a.w", &[4], 0, 0),
        info("b.w", &[4], 0, 8),
        info("unaligned", &[2], 1, 3),
        info("../../escape", &[1], 24, 0),
        info("odd", &[7], 200, 40),
    ];
    let path = write_temp(dir.path(), "layouts.gguf", &gguf(5, 0, &[], &infos, &data));
    let mount = Mount::new(&path, &[]);
    assert_eq!(mount.read("tensors/a/w.raw"), data[..16]);
    assert_eq!(mount.read("tensors/b/w.raw"), data[8..24]);
    assert_eq!(mount.read("tensors/unaligned.raw"), data[3..7]);
    assert_eq!(mount.read("tensors/odd.raw"), data[40..]);
    assert_eq!(mount.text("tensors/odd.dtype"), "ggml_type_200\n");
    assert!(!mount.path("tensors/odd.npy").exists());
    // `..` components stay inside the mount, under tensors/.
    let tsv = mount.text("tensors.tsv");
    let row = tsv.lines().find(|l| l.ends_with("\t../../escape")).unwrap();
    assert!(row.starts_with("tensors/"), "{row}");
    let npy = row.split('\t').next().unwrap();
    assert_eq!(mount.read(&npy.replace(".npy", ".raw")), data[..1]);
}

/// A random 4 KiB read of a large quantized tensor decodes only the run of blocks under it.
#[test]
fn random_reads_decode_only_the_blocks_they_touch() {
    let dir = tempfile::tempdir().unwrap();
    // Q8_0, 1024 x 1024: 4 MiB of float32 from 1.06 MiB of blocks.
    let blocks = 1024 * 1024 / 32;
    let mut data = Vec::with_capacity(blocks * 34);
    for i in 0..blocks {
        data.extend_from_slice(&0x3C00u16.to_le_bytes()); // d = 1.0
        data.extend((0..32).map(|j| ((i + j) % 251) as u8));
    }
    let path = write_temp(dir.path(), "big.gguf", &gguf(1, 0, &[], &[info("big", &[1024, 1024], 8, 0)], &data));
    let mount = Mount::new(&path, &[]);
    let decodes = || xattr_text(&mount.point, "user.wfs.decodes").parse::<u64>().unwrap();
    let npy = std::fs::File::open(mount.path("tensors/big.npy")).unwrap();
    let header = npy.metadata().unwrap().len() - 4 * 1024 * 1024;
    let before = decodes();
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let offset = header + 3 * 1024 * 1024 + 4096 * 7;
    npy.read_exact_at(&mut buf, offset).unwrap();
    let touched = decodes() - before;
    assert!((1..=2).contains(&touched), "{touched} decode units for one 4 KiB read");
    // The values: element k of the tensor is i8((block + k % 32) % 251) for block = k / 32.
    for (n, value) in buf.chunks(4).enumerate() {
        let k = (offset - header) as usize / 4 + n;
        let q = (((k / 32) + k % 32) % 251) as u8 as i8;
        assert_eq!(f32::from_le_bytes(value.try_into().unwrap()), f32::from(q), "element {k}");
    }
}

#[test]
fn tools_read_gguf_without_fuse() {
    let source = fixture("gguf/all_types.gguf");
    let mount = Mount::new(&source, &[]);
    for path in ["tensors/quant/q4_k.npy", "tensors/quant/iq2_xxs.npy", "metadata.json", "metadata/tokenizer.ggml.tokens.txt", "info.json"] {
        let out = wfs().arg("cat").arg(&source).arg(path).output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, mount.read(path), "{path}");
    }
    let out = wfs().arg("ls").arg(&source).arg("-R").output().unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(listing.contains("tensors/quant/q6_k.npy") && listing.contains("metadata/tokenizer.ggml.scores.txt"), "{listing}");
    let dir = tempfile::tempdir().unwrap();
    let out = wfs().arg("export").arg(&source).arg(dir.path()).args(["--path", "tensors/quant"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.path().join("q5_k.npy")).unwrap(), mount.read("tensors/quant/q5_k.npy"));
    let out = wfs().args(["info", "--json"]).arg(&source).output().unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["general.name"], "wfs all types");
}

/// The GGUF items of ../shared/real-models against their oracles.
#[test]
fn real_gguf_models() {
    let Some(real) = real_models() else { return };
    for item in ["gguf_stories260k_f32", "gguf_tiny_llama_mixed"] {
        let oracle = load_json(&real.join(format!("{item}.oracle.json")));
        for part in oracle["parts"].as_array().unwrap() {
            let mount = Mount::new(&real.join(item).join(part["path"].as_str().unwrap()), &[]);
            let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
            assert_eq!(info["gguf_version"], 3);
            assert_eq!(info["alignment"], part["alignment"]);
            assert_eq!(info["tensor_data_offset"], part["tensor_data_offset"]);
            let tensors = part["tensors"].as_array().unwrap();
            assert_eq!(info["tensors"], tensors.len(), "{item}");
            let tsv = mount.text("tensors.tsv");
            for t in tensors {
                let name = t["name"].as_str().unwrap();
                let row = tsv.lines().find(|l| l.ends_with(&format!("\t{name}"))).unwrap_or_else(|| panic!("{item}: no row for {name}"));
                let path = row.split('\t').next().unwrap();
                let base = path.rsplit_once('.').unwrap().0;
                check_tensor(&mount, base, t);
                assert!(mount.path(&format!("{base}.npy")).exists(), "{name} has no .npy");
            }
            let meta: Value = serde_json::from_slice(&mount.read("metadata.json")).unwrap();
            for (key, want) in part["metadata"].as_object().unwrap() {
                match want.get("len") {
                    // Long arrays: the oracle gives their length.
                    Some(len) => {
                        assert_eq!(meta[key].as_array().unwrap().len() as u64, len.as_u64().unwrap(), "{key}");
                        assert_eq!(mount.text(&format!("metadata/{key}.txt")).lines().count() as u64, len.as_u64().unwrap(), "{key}");
                    }
                    None => assert_eq!(&meta[key], want, "{item}: {key}"),
                }
            }
            assert_eq!(meta.as_object().unwrap().len(), part["metadata"].as_object().unwrap().len());
            // Every .npy loads with numpy, plainly and mapped, as finite float32 of the shape.
            let script = r#"
import sys, numpy as np
for line in open(sys.argv[1] + "/tensors.tsv").read().splitlines()[1:]:
    path, dtype, shape = line.split("\t")[:3]
    for mode in (None, "r"):
        a = np.load(sys.argv[1] + "/" + path, mmap_mode=mode)
        assert a.shape == tuple(int(d) for d in shape.split(",")), path
        assert a.dtype == (np.float16 if dtype == "float16" else np.float32), (path, a.dtype)
        assert np.isfinite(a).all(), path
"#;
            let out = Command::new("python3").arg("-c").arg(script).arg(&mount.point).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    // A broken real file: data written right after the infos, so a tensor runs past the end.
    let bad = real.join("bad/bad_gguf_unaligned_truncated/test_model.gguf");
    let stderr = rejected(&bad);
    assert!(stderr.contains("past the end of the file"), "{stderr}");
    let failed = Mount::try_new(&bad, &[]).err().expect("the truncated file must not mount");
    assert_eq!(String::from_utf8_lossy(&failed.stderr).lines().count(), 1);
}

/// The fixtures with random bytes changed, or cut short, never panic the reader, the decoders or
/// the tree (the `gguf` fuzz target's check, run here on a fixed set of mutations).
#[test]
fn mutated_fixtures_never_panic() {
    let mut seed = 1414u64;
    let mut next = move |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n.max(1)
    };
    for name in ["all_types.gguf", "handmade.gguf", "v1.gguf", "big_endian.gguf"] {
        let original = std::fs::read(fixture(&format!("gguf/{name}"))).unwrap();
        for round in 0..300 {
            let mut bytes = original.clone();
            if round % 4 == 0 {
                bytes.truncate(next(bytes.len()));
            } else {
                for _ in 0..1 + next(4) {
                    let at = next(bytes.len());
                    bytes[at] = next(256) as u8;
                }
            }
            if let Ok(model) = wfs::fuzzing::open_format("gguf", &bytes) {
                wfs::fuzzing::read_all(&model, 1 << 20);
                let tree = wfs::tree::Tree::build(model, "mutated");
                wfs::fuzzing::check_tree(&tree).unwrap();
            }
        }
    }
}
