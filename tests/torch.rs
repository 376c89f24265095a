//! PyTorch `torch.save` files (tests/fixtures/torch, written by real torch; real-models pt_*),
//! mounted for real and checked against what `torch.load` returned when they were written;
//! hostile pickles must never run anything.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// One `tensors.tsv` row: (path of the .npy, dtype, shape, bytes, name).
fn rows(mount: &Mount) -> Vec<[String; 5]> {
    mount
        .text("tensors.tsv")
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.splitn(5, '\t').collect();
            assert_eq!(f.len(), 5, "tensors.tsv row {line:?}");
            [f[0], f[1], f[2], f[3], f[4]].map(str::to_string)
        })
        .collect()
}

/// Every oracle tensor (name, dtype, shape, sha256) is in `tensors.tsv` under its name, and its
/// `.raw`, `.shape` and `.dtype` match; the mount has no other tensors.
pub(crate) fn check_tensors(mount: &Mount, tensors: &[Value]) {
    let rows = rows(mount);
    let mut names: Vec<&str> = rows.iter().map(|r| r[4].as_str()).collect();
    let mut expected: Vec<&str> = tensors.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected, "tensor names");
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let row = rows.iter().find(|r| r[4] == name).unwrap();
        let path = row[0].strip_suffix(".npy").unwrap();
        check_tensor(mount, path, t);
        assert_eq!(row[1], t["dtype"].as_str().unwrap(), "tensors.tsv dtype of {name}");
        // docs/tree.md 7.1: the path is the name split on '/' and '.' (when no component needs escaping).
        if !name.contains("//") && !name.contains('%') && !name.contains(['\'', ' ', '{']) {
            assert_eq!(path, format!("tensors/{}", name.replace('.', "/")), "path of {name}");
        }
    }
}

/// The value at a `/`-separated key path of a JSON document.
fn at<'a>(doc: &'a Value, path: &str) -> &'a Value {
    path.split('/').fold(doc, |v, key| match v {
        Value::Array(items) => &items[key.parse::<usize>().unwrap()],
        _ => v.get(key).unwrap_or_else(|| panic!("object.json lacks {path}")),
    })
}

/// numpy loads every `.npy` (plainly and memory-mapped) with the `.shape` the tree gives, and
/// the values equal the `.raw` bytes (widened from bfloat16 by numpy's own arithmetic).
pub(crate) fn check_with_numpy_load(mount: &Mount) {
    let script = r#"
import sys, numpy as np
root = sys.argv[1]
rows = [l.split('\t') for l in open(f"{root}/tensors.tsv").read().splitlines()[1:]]
for path, dtype, shape, size, name in rows:
    shape = tuple(int(d) for d in shape.split(',') if d)
    raw = open(f"{root}/{path[:-4]}.raw", 'rb').read()
    assert len(raw) == int(size), path
    for mode in (None, 'r'):
        a = np.load(f"{root}/{path}", mmap_mode=mode, allow_pickle=False)
        assert a.shape == shape, (path, a.shape, shape)
        if dtype == 'bfloat16':
            want = (np.frombuffer(raw, '<u2').astype('<u4') << 16).view('<f4').reshape(shape)
            assert np.array_equal(a, want, equal_nan=True), path
        elif not dtype.startswith('float8') and not dtype.startswith('float4'):
            assert a.dtype == np.dtype(dtype), (path, a.dtype, dtype)
            assert a.tobytes() == raw, path
print(len(rows))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&mount.point).output().unwrap();
    assert!(out.status.success(), "numpy check failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixture("torch"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().unwrap().strip_suffix(".expect.json").map(str::to_string))
        .collect();
    names.sort();
    assert!(names.len() >= 13, "{names:?}");
    names
}

#[test]
fn every_fixture_matches_what_torch_load_returned() {
    for name in fixture_names() {
        let expect = load_json(&fixture(&format!("torch/{name}.expect.json")));
        let mount = Mount::new(&fixture(&format!("torch/{name}")), &[]);
        check_tensors(&mount, expect["tensors"].as_array().unwrap());
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        assert_eq!(info["format"], "pytorch");
        assert_eq!(info["torch_format"], expect["format"], "{name}");
        assert!(info.get("skipped").is_none(), "{name}: {info}");
        let object: Value = serde_json::from_slice(&mount.read("object.json")).unwrap();
        for (path, value) in expect["json"].as_object().unwrap() {
            assert_eq!(at(&object, path), value, "{name}: object.json {path}");
        }
        check_with_numpy_load(&mount);
    }
}

#[test]
fn float8_and_views_read_as_their_values() {
    let mount = Mount::new(&fixture("torch/dtypes.pt"), &[]);
    let script = r#"
import sys, numpy as np
root = sys.argv[1]
a = np.load(f"{root}/tensors/f8_e4m3fn.npy")
assert a.dtype == np.float32 and a.tolist() == [1.0, -2.0, 0.5, 3.25, -0.125, 448.0], a
v = np.load(f"{root}/tensors/f8_view.npy")
assert v.tolist() == [0.5, 3.25, -0.125], v
f4 = np.load(f"{root}/tensors/f4.npy")
assert f4.tolist() == [0.5, 1.0, 6.0, -6.0], f4
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&mount.point).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mount.text("tensors/f8_e5m2.dtype"), "float8_e5m2\n");

    let views = Mount::new(&fixture("torch/views.pt"), &[]);
    let script = r#"
import sys, numpy as np
root = sys.argv[1]
x = np.arange(24.0, dtype=np.float32)
m = x.reshape(4, 6)
for name, want in [("transposed", m.T), ("step", x[1::3]), ("column", m[:, 1]), ("slice", x[2:5]),
                   ("permuted", x.reshape(2, 3, 4).transpose(2, 0, 1)), ("expanded", np.broadcast_to(x[:3].reshape(3, 1), (3, 4))),
                   ("i64_block", np.arange(30).reshape(5, 6)[1:4, 2:5])]:
    got = np.load(f"{root}/tensors/{name}.npy", mmap_mode='r')
    assert np.array_equal(got, want), (name, got, want)
    # Any sub-range of a gathered view reads the same bytes as the whole.
    raw = open(f"{root}/tensors/{name}.raw", 'rb').read()
    with open(f"{root}/tensors/{name}.raw", 'rb') as f:
        f.seek(5)
        assert f.read(7) == raw[5:12], name
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&views.point).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn pickled_module_and_checkpoint_objects_are_json() {
    let mount = Mount::new(&fixture("torch/module.pt"), &[]);
    let object: Value = serde_json::from_slice(&mount.read("object.json")).unwrap();
    assert_eq!(object["__class__"], "__main__.Net");
    assert_eq!(at(&object, "_modules/layers/_modules/0/__class__"), "torch.nn.modules.linear.Linear");
    assert_eq!(at(&object, "_modules/layers/_modules/0/in_features"), 8);
    assert_eq!(at(&object, "_modules/block/_buffers/scale/__tensor__"), "block.scale");
    // Each level holding tensors has its own object.json.
    let block: Value = serde_json::from_slice(&mount.read("tensors/block/bn/object.json")).unwrap();
    assert_eq!(block["__class__"], "torch.nn.modules.batchnorm.BatchNorm1d");
    assert_eq!(block["momentum"], 0.1);

    // Hyper-parameters are greppable text.
    let ckpt = Mount::new(&fixture("torch/lightning.ckpt"), &[]);
    let out = Command::new("grep").args(["-rl", "gru-classifier"]).arg(&ckpt.point).output().unwrap();
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(found.lines().any(|l| l.ends_with("/object.json")), "{found}");
    assert!(ckpt.path("tensors/optimizer_states/0/state/4/exp_avg.npy").is_file());
    let sched: Value = serde_json::from_slice(&ckpt.read("tensors/numpy_stats/object.json")).unwrap();
    assert_eq!(sched["fortran"]["__tensor__"], "numpy_stats/fortran");
}

#[test]
fn hostile_pickles_run_nothing_and_fail_cleanly() {
    let cases = load_json(&fixture("torch/hostile/cases.json"));
    for case in cases.as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let source = fixture(&format!("torch/hostile/{file}"));
        let sentinel = case["sentinel"].as_str().map(Path::new);
        if let Some(s) = sentinel {
            let _ = std::fs::remove_file(s);
        }
        let needle = case["needle"].as_str();
        match case["expect"].as_str().unwrap() {
            "mount" => {
                let mount = Mount::new(&source, &[]);
                // Read everything, as a curious user would.
                let out = Command::new("grep").args(["-r", "-c", "."]).arg(&mount.point).output().unwrap();
                assert!(out.status.success() || out.status.code() == Some(1), "{file}");
                let info = mount.text("info.json");
                if let Some(needle) = needle {
                    assert!(info.contains(needle), "{file}: {info}");
                }
                let info: Value = serde_json::from_str(&info).unwrap();
                let scan = wfs().arg("scan").arg(&source).output().unwrap();
                let line = String::from_utf8_lossy(&scan.stdout);
                if sentinel.is_some() {
                    let object = mount.text("object.json");
                    assert!(object.contains("\"__class__\""), "{file}: the payload is recorded as data: {object}");
                    assert!(info["unsafe_globals"].as_u64() >= Some(1), "{file}: {info}");
                    assert_eq!(scan.status.code(), Some(1), "{file}: {line}");
                    assert!(line.contains(": dangerous; dangerous: "), "{file}: {line}");
                } else {
                    assert_eq!(info["unsafe_globals"], 0, "{file}: {info}");
                    assert_eq!(scan.status.code(), Some(0), "{file}: {line}");
                }
            }
            _ => {
                let out = Mount::try_new(&source, &[]).err().unwrap_or_else(|| panic!("{file} mounted"));
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(4), "{file}: {stderr}");
                assert_eq!(stderr.lines().count(), 1, "{file}: {stderr}");
                assert!(stderr.starts_with("wfs: ") && stderr.contains(needle.unwrap()), "{file}: {stderr}");
            }
        }
        if let Some(s) = sentinel {
            assert!(!s.exists(), "{file}: the pickle ran code ({} exists)", s.display());
        }
    }
}

#[test]
fn ls_cat_export_and_info_work_without_fuse() {
    let source = fixture("torch/lightning.ckpt");
    let mount = Mount::new(&source, &[]);
    let run = |args: &[&str]| {
        let out = wfs().arg(args[0]).arg(&source).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "wfs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert_eq!(run(&["info", "--json"]), mount.read("info.json"));
    assert_eq!(run(&["ls", "--tensors"]), mount.read("tensors.tsv"));
    for rel in ["object.json", "tensors/state_dict/model/layers/0/weight.npy", "tensors/numpy_stats/fortran.raw"] {
        assert_eq!(run(&["cat", rel]), mount.read(rel), "wfs cat {rel}");
    }
    let listed = String::from_utf8(run(&["ls", "tensors/state_dict/model/block/bn"])).unwrap();
    assert!(listed.lines().any(|l| l == "running_var.npy"), "{listed}");
    let out = tempfile::tempdir().unwrap();
    assert!(wfs().arg("export").arg(&source).arg(out.path().join("t")).status().unwrap().success());
    let exported = std::fs::read(out.path().join("t/tensors/optimizer_states/0/state/4/exp_avg.raw")).unwrap();
    assert_eq!(exported, mount.read("tensors/optimizer_states/0/state/4/exp_avg.raw"));
}

#[test]
fn real_models_match_their_oracles() {
    let Some(root) = real_models() else { return };
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(item) = name.strip_suffix(".oracle.json").filter(|n| n.starts_with("pt_")) else { continue };
        let oracle = load_json(&root.join(&name));
        for part in oracle["parts"].as_array().unwrap() {
            let mount = Mount::new(&root.join(item).join(part["path"].as_str().unwrap()), &[]);
            check_tensors(&mount, part["tensors"].as_array().unwrap());
            let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
            let format = part["format"].as_str().unwrap().strip_prefix("torch-").unwrap();
            assert_eq!(info["torch_format"], format, "{item}");
            assert_eq!(info["top_level"], part["top_level"], "{item}");
            if let Some(prefix) = part["metadata"].get("zip_prefix") {
                assert_eq!(&info["record_prefix"], prefix, "{item}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} PyTorch items");
}

/// The fuzz targets' seeds, through the targets' own entry points (`pickle`: a data.pkl over
/// fixed storages; `torch`: whole files): every tensor read back and the tree's invariants hold.
#[test]
fn fuzz_seeds_replay() {
    let corpus = |target: &str| {
        let dir = repo().join("fuzz/corpus").join(target);
        let files: Vec<Vec<u8>> = std::fs::read_dir(dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        assert!(files.len() >= 5, "{target} seeds");
        files
    };
    let mut tensors = 0;
    let mut check = |model: wfs::model::Model| {
        tensors += model.tensors.len();
        wfs::fuzzing::read_all(&model, 1 << 20);
        wfs::fuzzing::check_tree(&wfs::tree::Tree::build(model, "seed")).unwrap();
    };
    for seed in corpus("pickle") {
        check(wfs::fuzzing::torch_pickle(&seed).unwrap());
    }
    let options = wfs::formats::ReadOptions { cache: std::sync::Arc::new(wfs::cache::ChunkCache::new(1 << 20)) };
    for seed in corpus("torch") {
        check(wfs::formats::open(wfs::formats::Source::Bytes(seed), &options).unwrap());
    }
    assert!(tensors > 100, "{tensors} tensors in the seeds");
}
