//! Keras 3 sources (tests/fixtures/gen/make_keras3.py): `.keras` archives, `.weights.h5`,
//! sharded weights and models piped on standard input, mounted for real; hostile archives; and
//! the real-world Keras 3 files when ../shared/real-models is present.

use crate::common::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn check_fixture(name: &str) -> Mount {
    let mount = Mount::new(&fixture(&format!("keras3/{name}")), &[]);
    check_expect(&mount, &load_json(&fixture(&format!("keras3/{name}.expect.json"))));
    check_with_numpy(&mount, &fixture(&format!("keras3/{name}.expect.npz")));
    mount
}

/// Directories under `layers/` (the index links excluded).
fn layer_dirs(mount: &Mount) -> BTreeSet<String> {
    std::fs::read_dir(mount.path("layers"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect()
}

/// The names of `model.layers` per config.json (a Sequential's InputLayer entry excluded).
fn config_layer_names(config: &Value) -> Vec<String> {
    let sequential = config["class_name"] == "Sequential";
    config["config"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| !(sequential && l["class_name"] == "InputLayer"))
        .map(|l| l["config"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// `layers/` holds exactly the config's layers, each with its own config entry.
fn check_layers_match_config(mount: &Mount) {
    let config: Value = serde_json::from_slice(&mount.read("config.json")).unwrap();
    let names = config_layer_names(&config);
    assert_eq!(layer_dirs(mount), names.iter().cloned().collect::<BTreeSet<_>>());
    for name in &names {
        let entry: Value = serde_json::from_slice(&mount.read(&format!("layers/{name}/config.json"))).unwrap();
        assert_eq!(entry["config"]["name"], name.as_str());
    }
}

#[test]
fn functional_keras_archive() {
    let mount = check_fixture("k3_functional.keras");
    check_layers_match_config(&mount);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], "keras");
    assert_eq!(info["keras_version"], "3.15.1");
    assert!(info["date_saved"].is_string());
    // config.json is the member's bytes as stored.
    let stored = Command::new("unzip").arg("-p").arg(fixture("keras3/k3_functional.keras")).arg("config.json").output().unwrap();
    assert_eq!(mount.read("config.json"), stored.stdout);
}

#[test]
fn deflated_keras_archive() {
    let mount = check_fixture("k3_deflated.keras");
    check_layers_match_config(&mount);
}

#[test]
fn float16_and_bfloat16_layers() {
    let mount = check_fixture("k3_mixed.keras");
    check_layers_match_config(&mount);
    assert_eq!(mount.text("layers/bf16_dense/kernel.dtype"), "bfloat16\n");
    // .npy widens bfloat16 to float32 (4 bytes per element after the header)
    let raw = mount.read("layers/bf16_dense/kernel.raw");
    let npy = mount.read("layers/bf16_dense/kernel.npy");
    assert!(npy.ends_with(&raw.chunks(2).flat_map(|b| [0, 0, b[0], b[1]]).collect::<Vec<u8>>()));
}

#[test]
fn standalone_weights_file() {
    let mount = check_fixture("k3_sub.weights.h5");
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], "keras-weights");
    assert_eq!(layer_dirs(&mount), ["sub_block", "sub_conv", "sub_head", "sub_in", "sub_out", "sub_pool"].map(String::from).into());
}

/// Tree paths of the sharded oracle that the files cannot name: without config.json, a
/// BatchNormalization that dropped gamma or beta (same shapes) and a TimeDistributed's inner
/// layer (class unknown) keep their variables' indices (docs/tree.md 3).
const UNNAMEABLE_WITHOUT_CONFIG: [(&str, &str); 8] = [
    ("layers/inner_block/bn_nocenter/gamma", "layers/inner_block/bn_nocenter/0"),
    ("layers/bn_noscale/beta", "layers/bn_noscale/0"),
    ("layers/td/td_inner/kernel", "layers/td/td_inner/0"),
    ("layers/td/td_inner/bias", "layers/td/td_inner/1"),
    ("optimizer/inner_block_bn_nocenter_gamma_", "optimizer/inner_block_bn_nocenter_0_"),
    ("optimizer/bn_noscale_beta_", "optimizer/bn_noscale_0_"),
    ("optimizer/td_td_inner_kernel_", "optimizer/td_td_inner_0_"),
    ("optimizer/td_td_inner_bias_", "optimizer/td_td_inner_1_"),
];

fn without_config(path: &str) -> String {
    UNNAMEABLE_WITHOUT_CONFIG
        .iter()
        .find(|(from, _)| path.starts_with(from))
        .map_or_else(|| path.to_string(), |(from, to)| path.replacen(from, to, 1))
}

#[test]
fn sharded_weights() {
    let mount = Mount::new(&fixture("keras3/k3_sharded.weights.json"), &[]);
    let mut expect = load_json(&fixture("keras3/k3_sharded.weights.json.expect.json"));
    let tensors: serde_json::Map<String, Value> =
        expect["tensors"].as_object().unwrap().iter().map(|(k, v)| (without_config(k), v.clone())).collect();
    assert!(tensors.keys().any(|k| k.ends_with("/0")), "renaming applied");
    expect["tensors"] = Value::Object(tensors);
    check_expect(&mount, &expect);
    // The numpy check under the same names, through a renamed copy of the oracle's arrays.
    let tmp = tempfile::tempdir().unwrap();
    let npz = tmp.path().join("renamed.npz");
    let renames: Vec<String> = UNNAMEABLE_WITHOUT_CONFIG.iter().map(|(a, b)| format!("{a}={b}")).collect();
    let script = r#"
import sys, numpy as np
src, dst, pairs = sys.argv[1], sys.argv[2], [p.split('=') for p in sys.argv[3:]]
def rename(k):
    for a, b in pairs:
        if k.startswith(a):
            return b + k[len(a):]
    return k
z = np.load(src, allow_pickle=False)
np.savez(dst, **{rename(k): z[k] for k in z.files})
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(fixture("keras3/k3_sharded.weights.json.expect.npz"))
        .arg(&npz)
        .args(&renames)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_with_numpy(&mount, &npz);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], "keras-weights-sharded");
    assert_eq!(info["shards"], 3);
}

/// The optimizer slot names follow the oracle's index table (docs/formats/keras.md#weightsh5-layout).
#[test]
fn optimizer_slots_named_in_index_order() {
    let expect = load_json(&fixture("keras3/k3_functional.keras.expect.json"));
    let index = expect["optimizer_vars_index"].as_object().unwrap();
    let mount = Mount::new(&fixture("keras3/k3_functional.keras"), &[]);
    let tsv = mount.text("tensors.tsv");
    let rows: Vec<&str> = tsv.lines().filter(|l| l.starts_with("optimizer/")).map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(rows.len(), index.len());
    for (path, i) in index {
        assert_eq!(rows[i.as_u64().unwrap() as usize], format!("{path}.npy"));
    }
}

/// `wfs mount - POINT` with `source` on standard input.
fn mount_stdin(source: &Path, args: &[&str]) -> Result<Mount, Output> {
    let dir = tempfile::Builder::new().prefix("wfs-test-").tempdir().unwrap();
    let point = dir.path().join("m");
    let input = std::fs::File::open(source).unwrap();
    let out = wfs().arg("mount").arg("-").arg(&point).args(args).stdin(Stdio::from(input)).output().unwrap();
    if out.status.success() { Ok(Mount { dir, point }) } else { Err(out) }
}

fn check_stdin_same_as_file(source: &Path) {
    let from_file = Mount::new(source, &[]);
    let from_stdin = mount_stdin(source, &[]).unwrap_or_else(|o| panic!("stdin mount: {}", String::from_utf8_lossy(&o.stderr)));
    let tsv = from_file.text("tensors.tsv");
    assert_eq!(tsv, from_stdin.text("tensors.tsv"));
    for row in tsv.lines().skip(1) {
        let npy = row.split('\t').next().unwrap();
        let raw = npy.replace(".npy", ".raw");
        assert_eq!(from_file.read(&raw), from_stdin.read(&raw), "{raw}");
        assert_eq!(from_file.read(npy), from_stdin.read(npy), "{npy}");
    }
    let info: Value = serde_json::from_slice(&from_stdin.read("info.json")).unwrap();
    assert_eq!(info["source"], "-");
}

#[test]
fn stdin_keras_archive() {
    check_stdin_same_as_file(&fixture("keras3/k3_functional.keras"));
    check_stdin_same_as_file(&fixture("keras3/k3_deflated.keras"));
}

#[test]
fn stdin_hdf5_files() {
    check_stdin_same_as_file(&fixture("h5/k2_functional.h5"));
    check_stdin_same_as_file(&fixture("h5/v_gzip_shuffle.h5"));
    check_stdin_same_as_file(&fixture("keras3/k3_sub.weights.h5"));
}

fn assert_fails(out: Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("wfs: ") && err.contains(needle), "{err}");
}

#[test]
fn bad_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_fails(mount_stdin(&empty, &[]).err().unwrap(), 4, "standard input: file is empty");
    let random = tmp.path().join("random");
    std::fs::write(&random, (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    assert_fails(mount_stdin(&random, &[]).err().unwrap(), 4, "standard input: not a model file");
    let source = fixture("keras3/k3_functional.keras");
    assert_fails(mount_stdin(&source, &["--stdin-limit", "64K"]).err().unwrap(), 3, "raise --stdin-limit");
    assert_fails(
        mount_stdin(&fixture("keras3/k3_sharded.weights.json"), &[]).err().unwrap(),
        4,
        "mount the .weights.json file itself",
    );
}

/// Sets the uncompressed size that the central directory declares for every member.
fn declare_size(path: &Path, size: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(4).position(|w| w == b"PK\x01\x02") {
        let header = at + i;
        bytes[header + 24..header + 28].copy_from_slice(&size.to_le_bytes());
        at = header + 4;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn hostile_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let source = std::fs::read(fixture("keras3/k3_functional.keras")).unwrap();
    let truncated = tmp.path().join("truncated.keras");
    std::fs::write(&truncated, &source[..source.len() / 2]).unwrap();
    assert_fails(Mount::try_new(&truncated, &[]).err().unwrap(), 4, "zip");

    let no_weights = tmp.path().join("no_weights.keras");
    make_zip(&no_weights, &[("config.json", "@config.json", false), ("metadata.json", "@metadata.json", false)], k3_member);
    assert_fails(Mount::try_new(&no_weights, &[]).err().unwrap(), 4, "without model.weights.h5");

    let npz = tmp.path().join("npz.keras");
    make_zip(&npz, &[("config.json", "@config.json", false), ("model.weights.npz", "x", false)], k3_member);
    assert_fails(Mount::try_new(&npz, &[]).err().unwrap(), 4, ".npz weights");

    let bomb = tmp.path().join("bomb.keras");
    make_zip(&bomb, &[("model.weights.h5", "@model.weights.h5", true)], k3_member);
    declare_size(&bomb, 0xFFFF_FFF0);
    assert_fails(Mount::try_new(&bomb, &[]).err().unwrap(), 4, "limit for compressed members");

    let liar = tmp.path().join("liar.keras");
    make_zip(&liar, &[("model.weights.h5", "@model.weights.h5", true)], k3_member);
    declare_size(&liar, 1000);
    assert_fails(Mount::try_new(&liar, &[]).err().unwrap(), 4, "declared");

    let not_hdf5 = tmp.path().join("not_hdf5.keras");
    make_zip(&not_hdf5, &[("model.weights.h5", "garbage", false)], k3_member);
    assert_fails(Mount::try_new(&not_hdf5, &[]).err().unwrap(), 4, "HDF5");

    // Traversal names are only ever tree names, made safe; nothing is written anywhere.
    let traversal = tmp.path().join("traversal.keras");
    make_zip(
        &traversal,
        &[
            ("config.json", "@config.json", false),
            ("model.weights.h5", "@model.weights.h5", false),
            ("assets/../../escaped", "boo", false),
            ("../../outside", "boo", false),
            ("assets/vocab.txt", "a\nb\n", true),
        ],
        k3_member,
    );
    let mount = Mount::new(&traversal, &[]);
    assert_eq!(mount.text("assets/%2E%2E/%2E%2E/escaped"), "boo");
    assert_eq!(mount.text("assets/vocab.txt"), "a\nb\n");
    assert!(!mount.path("outside").exists() && !mount.dir.path().join("escaped").exists());
    assert!(!tmp.path().join("escaped").exists() && !tmp.path().join("outside").exists());
}

#[test]
fn sharded_index_with_hostile_shard_name() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("m.weights.json");
    std::fs::write(&index, r#"{"metadata": {}, "weight_map": {"/vars": "../../etc/passwd"}}"#).unwrap();
    assert_fails(Mount::try_new(&index, &[]).err().unwrap(), 4, "not a file beside the index");
    std::fs::write(&index, r#"{"not": "an index"}"#).unwrap();
    assert_fails(Mount::try_new(&index, &[]).err().unwrap(), 4, "no weight_map");
}

/// Every oracle tensor of a real-world Keras 3 file appears in the tree with its bytes, dtype
/// and shape; weights sit at `layers/<config name>/<kernel|bias>` (docs/formats/keras.md#index-to-variable-name-for-built-in-layers, docs/formats/keras.md#mapping-groups-to-configjson-layer-names: these
/// files are Dense/Conv2D only) and optimizer variables under `optimizer/`.
fn check_real(item: &str, file: &str) {
    let Some(root) = real_models() else { return };
    let oracle = load_json(&root.join(format!("{item}.oracle.json")));
    let mount = Mount::new(&root.join(item).join(file), &[]);
    // The group -> layer name table from config.json (docs/formats/keras.md#mapping-groups-to-configjson-layer-names), where there is one.
    let groups: Option<HashMap<String, String>> = mount.path("config.json").exists().then(|| {
        let config: Value = serde_json::from_slice(&mount.read("config.json")).unwrap();
        assert_eq!(layer_dirs(&mount), config_layer_names(&config).into_iter().collect::<BTreeSet<_>>());
        let sequential = config["class_name"] == "Sequential";
        let mut used: HashMap<String, usize> = HashMap::new();
        let mut table = HashMap::new();
        for layer in config["config"]["layers"].as_array().unwrap() {
            if sequential && layer["class_name"] == "InputLayer" {
                continue;
            }
            let kind = wfs::fuzzing::keras3_snake_case(layer["class_name"].as_str().unwrap());
            let seen = used.entry(kind.clone()).or_insert(0);
            let group = if *seen == 0 { kind.clone() } else { format!("{kind}_{seen}") };
            *seen += 1;
            table.insert(group, layer["config"]["name"].as_str().unwrap().to_string());
        }
        table
    });
    let rows: Vec<Vec<String>> =
        mount.text("tensors.tsv").lines().skip(1).map(|l| l.split('\t').map(String::from).collect()).collect();
    let digest: HashMap<&str, String> =
        rows.iter().map(|r| (r[0].as_str(), sha256_hex(&mount.read(&r[0].replace(".npy", ".raw"))))).collect();
    let mut used = BTreeSet::new();
    for part in oracle["parts"].as_array().unwrap() {
        for t in part["tensors"].as_array().unwrap() {
            let path = t["path"].as_str().unwrap();
            let shape: Vec<String> = t["shape"].as_array().unwrap().iter().map(|d| d.to_string()).collect();
            let (dtype, shape, sha) = (t["dtype"].as_str().unwrap(), shape.join(","), t["sha256"].as_str().unwrap());
            let expected_path = match (path.split('/').collect::<Vec<_>>().as_slice(), &groups) {
                (["layers", group, "vars", i], Some(groups)) => {
                    Some(format!("layers/{}/{}.npy", groups[*group], ["kernel", "bias"][i.parse::<usize>().unwrap()]))
                }
                (["layers", group, "vars", i], None) => Some(format!("layers/{group}/{}.npy", ["kernel", "bias"][i.parse::<usize>().unwrap()])),
                _ => None,
            };
            let found = rows.iter().find(|r| {
                !used.contains(&r[0])
                    && r[1] == dtype
                    && r[2] == shape
                    && digest[r[0].as_str()] == sha
                    && expected_path.as_ref().map_or(r[0].starts_with("optimizer/"), |p| *p == r[0])
            });
            let found = found.unwrap_or_else(|| panic!("{item}: no tree tensor for {path} (expected at {expected_path:?})"));
            used.insert(found[0].clone());
        }
    }
}

#[test]
fn real_keras333_archive() {
    check_real("keras333_raspcar", "model.keras");
}

#[test]
fn real_keras341_archive() {
    check_real("keras341_devnagari_cnn", "model.keras");
}

#[test]
fn real_keras3_weights_file() {
    check_real("w_k3_churn_jenish", "model.weights.h5");
}

/// A member of the fixture archive k3_mixed.keras.
fn k3_member(name: &str) -> Vec<u8> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(fixture("keras3/k3_mixed.keras")).unwrap()).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut archive.by_name(name).unwrap(), &mut bytes).unwrap();
    bytes
}
