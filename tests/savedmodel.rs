//! SavedModels written by real TensorFlow (tests/fixtures/savedmodel, real-models): directories
//! and zips of them, mounted for real and compared with TF's own view; broken ones must fail in
//! one line or mount what is intact and say what is not.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn info(mount: &Mount) -> Value {
    serde_json::from_slice(&mount.read("info.json")).unwrap()
}

/// Mounts `savedmodel/<name>` and checks it against its oracles: tensors, numpy, signatures.
fn check_fixture(name: &str) -> Mount {
    let mount = Mount::new(&fixture(&format!("savedmodel/{name}")), &[]);
    let expect = load_json(&fixture(&format!("savedmodel/{name}.expect.json")));
    assert_eq!(expect["fixture"], name);
    check_expect(&mount, &expect);
    check_with_numpy(&mount, &fixture(&format!("savedmodel/{name}.expect.npz")));
    let signatures: Value = serde_json::from_slice(&mount.read("signatures.json")).unwrap();
    assert_eq!(signatures, load_json(&fixture(&format!("savedmodel/{name}.signatures.json"))), "{name}");
    let info = info(&mount);
    assert_eq!(info["format"], "tf-savedmodel");
    assert_eq!(info["tensorflow_version"], expect["tensorflow_version"]);
    assert_eq!(info["tags"], expect["tags"]);
    assert_eq!(info["saved_model_schema_version"], 1);
    assert!(info.get("saved_model_error").is_none(), "{info}");
    mount
}

fn entries(mount: &Mount, rel: &str) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(mount.path(rel)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn tf_module_with_signatures_and_asset() {
    for name in ["tf_module", "tf_module.zip"] {
        let mount = check_fixture(name);
        assert_eq!(mount.text("assets/vocab.txt"), "alpha\nbeta\ngamma\n");
        // Plain variables of a module are no Keras layers.
        assert!(!mount.path("layers").exists() && !mount.path("config.json").exists());
        assert!(mount.path("object_graph.json").is_file());
    }
}

#[test]
fn keras3_export_layers_from_variable_names() {
    let mount = check_fixture("k3_export");
    // Every variable is exported twice; layers/ shows each once.
    assert_eq!(entries(&mount, "layers"), ["dense_0", "dense_1", "inner_seq"]);
    assert_eq!(entries(&mount, "layers/inner_seq/bn").len(), 4 * 4);
    assert!(!mount.path("config.json").exists());
}

#[test]
fn tf_keras_layers_from_keras_metadata() {
    for name in ["tfk_functional", "tfk_deflated.zip"] {
        let mount = check_fixture(name);
        let config: Value = serde_json::from_slice(&mount.read("config.json")).unwrap();
        assert_eq!(config["class_name"], "Functional");
        assert_eq!(config["config"]["layers"].as_array().unwrap().len(), 6);
        let drop: Value = serde_json::from_slice(&mount.read("layers/drop/config.json")).unwrap();
        assert_eq!(drop["class_name"], "Dropout");
        assert_eq!(info(&mount)["model_class"], "Functional");
        // Optimizer state and metrics stay under variables/ only.
        assert!(mount.path("variables/optimizer/_iterations.npy").is_file());
        assert_eq!(entries(&mount, "layers").len(), 6 + 6);
    }
}

#[test]
fn tf1_builder_variables_by_name() {
    let mount = check_fixture("tf1_builder");
    assert_eq!(info(&mount)["checkpoint_format"], "tf1-name-based");
    assert!(!mount.path("layers").exists());
}

#[test]
fn zip_is_read_in_place_never_extracted() {
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("model.zip");
    std::fs::copy(fixture("savedmodel/tf_module.zip"), &zip).unwrap();
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let point = work.path().join("m");
    let _guard = UnmountGuard(point.clone());
    let out = wfs().env("TMPDIR", &tmp).arg("mount").arg(&zip).arg(&point).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expect = load_json(&fixture("savedmodel/tf_module.zip.expect.json"));
    for path in expect["tensors"].as_object().unwrap().keys() {
        std::fs::read(point.join(format!("{path}.npy"))).unwrap();
    }
    // Stored members are served from the zip itself, at their offset in it.
    let raw = point.join("variables/w.raw");
    assert_eq!(xattr_text(&raw, "user.wfs.storage"), "plain");
    assert_eq!(xattr_text(&raw, "user.wfs.file"), zip.to_str().unwrap());
    let offset: usize = xattr_text(&raw, "user.wfs.offset").parse().unwrap();
    let bytes = std::fs::read(&raw).unwrap();
    assert_eq!(&std::fs::read(&zip).unwrap()[offset..offset + bytes.len()], bytes.as_slice());
    let mut left: Vec<String> =
        std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["m", "model.zip", "tmp"]);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

/// The real SavedModels: every tensor of `variables/variables`, TF's version, tags and
/// signature names, and the Keras layers.
fn check_real(item: &str) -> Option<Mount> {
    let root = real_models()?;
    let oracle = load_json(&root.join(format!("{item}.oracle.json")));
    let mount = Mount::new(&root.join(item), &[]);
    let tsv = mount.text("tensors.tsv");
    let part = oracle["parts"].as_array().unwrap().iter().find(|p| p["kind"] == "tf-savedmodel").unwrap();
    for t in part["tensors"].as_array().unwrap() {
        let key = t["key"].as_str().unwrap();
        let path = format!("variables/{}", key.strip_suffix("/.ATTRIBUTES/VARIABLE_VALUE").unwrap_or(key));
        check_tensor(&mount, &path, t);
        assert!(tsv.contains(&format!("{path}.npy\t{}\t", t["dtype"].as_str().unwrap())), "{item}: {path} in tensors.tsv");
    }
    let info = info(&mount);
    assert_eq!(info["format"], "tf-savedmodel");
    if let Some(version) = part.get("tf_version") {
        assert_eq!(&info["tensorflow_version"], version, "{item}");
        assert_eq!(info["tags"], part["tags"], "{item}");
        let signatures: Value = serde_json::from_slice(&mount.read("signatures.json")).unwrap();
        let names: Vec<&String> = signatures.as_object().unwrap().keys().collect();
        let want: Vec<&str> = part["signatures"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(names, want, "{item}");
    }
    Some(mount)
}

/// `layers/<i>` links, in order, and each layer's config naming it.
fn layer_links(mount: &Mount) -> Vec<String> {
    (0..)
        .map_while(|i| std::fs::read_link(mount.path(&format!("layers/{i}"))).ok())
        .map(|target| {
            let name = target.to_str().unwrap().to_string();
            let config: Value = serde_json::from_slice(&mount.read(&format!("layers/{name}/config.json"))).unwrap();
            assert_eq!(config["config"]["name"], name.as_str());
            name
        })
        .collect()
}

#[test]
fn real_tf212_keras_savedmodel() {
    let Some(mount) = check_real("sm_tetris_dqn") else { return };
    assert_eq!(layer_links(&mount), ["dense", "dense_1", "dense_2"]);
    assert_eq!(mount.read("layers/dense/kernel.raw"), mount.read("variables/layer_with_weights-0/kernel.raw"));
    assert_eq!(info(&mount)["model_class"], "Sequential");
}

#[test]
fn real_tf24_keras_savedmodel_metadata_in_saved_model_pb() {
    let Some(mount) = check_real("sm_nf_chaudry") else { return };
    let links = layer_links(&mount);
    assert_eq!(links.len(), 6, "{links:?}");
    assert_eq!(links[0], "conv2d");
    assert!(mount.path("layers/conv2d/kernel.npy").is_file());
    assert!(mount.path("config.json").is_file());
}

#[test]
fn real_savedmodel_with_two_byte_pb_mounts_its_variables() {
    let Some(mount) = check_real("bad/bad_savedmodel_crlf_pb") else { return };
    let why = info(&mount)["saved_model_error"].as_str().unwrap().to_string();
    assert!(why.contains("saved_model.pb (2 bytes) is not a SavedModel"), "{why}");
    assert!(!mount.path("signatures.json").exists());
}

fn assert_fails(source: &Path, needle: &str) {
    let out = Mount::try_new(source, &[]).err().expect("mount of a broken SavedModel succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("wfs: ") && err.contains(needle), "{err}");
}

/// A copy of a fixture SavedModel directory, to damage.
fn copy_of(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("cp").arg("-r").arg(fixture(&format!("savedmodel/{name}/."))).arg(tmp.path()).output().unwrap();
    assert!(out.status.success());
    tmp
}

#[test]
fn broken_saved_model_pb() {
    let expect = load_json(&fixture("savedmodel/tf_module.expect.json"));
    let tmp = copy_of("tf_module");
    std::fs::write(tmp.path().join("saved_model.pb"), b"\r\n").unwrap();
    let mount = Mount::new(tmp.path(), &[]);
    check_expect(&mount, &expect);
    assert!(info(&mount)["saved_model_error"].as_str().unwrap().contains("is not a SavedModel"));
    drop(mount);

    std::fs::remove_file(tmp.path().join("saved_model.pb")).unwrap();
    let mount = Mount::new(tmp.path(), &[]);
    check_expect(&mount, &expect);
    assert_eq!(info(&mount)["saved_model_error"], "saved_model.pb is missing");
    drop(mount);

    // Without variables there is nothing left to mount.
    std::fs::remove_dir_all(tmp.path().join("variables")).unwrap();
    std::fs::write(tmp.path().join("saved_model.pb"), b"\r\n").unwrap();
    assert_fails(tmp.path(), "saved_model.pb (2 bytes) is not a SavedModel");
    std::fs::write(tmp.path().join("saved_model.pb"), b"").unwrap();
    assert_fails(tmp.path(), "holds no MetaGraphDef");
}

#[test]
fn hostile_zips() {
    let tmp = tempfile::tempdir().unwrap();
    let none = tmp.path().join("none.zip");
    make_zip(&none, &[("readme.txt", "hello", false), ("deep/er/saved_model.pb", "@tf_module/saved_model.pb", false)], savedmodel_file);
    assert_fails(&none, "without model.weights.h5 or saved_model.pb");

    // A SavedModel only reachable through `..` is none.
    let escape = tmp.path().join("escape.zip");
    make_zip(&escape, &[("../saved_model.pb", "@tf_module/saved_model.pb", false)], savedmodel_file);
    assert_fails(&escape, "without model.weights.h5 or saved_model.pb");

    let broken = tmp.path().join("broken.zip");
    make_zip(&broken, &[("sm/saved_model.pb", "\r\n", true)], savedmodel_file);
    assert_fails(&broken, "is not a SavedModel");

    // Traversal names are only ever tree names, made safe; nothing is written anywhere.
    let traversal = tmp.path().join("traversal.zip");
    let v = "tf_module/variables/variables";
    make_zip(
        &traversal,
        &[
            ("saved_model.pb", "@tf_module/saved_model.pb", true),
            ("variables/variables.index", &format!("@{v}.index"), false),
            ("variables/variables.data-00000-of-00001", &format!("@{v}.data-00000-of-00001"), true),
            ("assets/../../escaped", "boo", false),
            ("../../outside", "boo", false),
        ],
        savedmodel_file,
    );
    let mount = Mount::new(&traversal, &[]);
    check_expect(&mount, &load_json(&fixture("savedmodel/tf_module.expect.json")));
    assert_eq!(mount.text("assets/%2E%2E/%2E%2E/escaped"), "boo");
    assert!(!mount.path("outside").exists() && !mount.dir.path().join("escaped").exists());
    assert!(!tmp.path().join("escaped").exists() && !tmp.path().join("outside").exists());
}

#[test]
fn zipped_savedmodel_on_stdin() {
    let source = fixture("savedmodel/tfk_deflated.zip");
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    let _guard = UnmountGuard(point.clone());
    let out = wfs()
        .arg("mount")
        .arg("-")
        .arg(&point)
        .stdin(std::fs::File::open(&source).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expect = load_json(&fixture("savedmodel/tfk_deflated.zip.expect.json"));
    let bias = &expect["tensors"]["layers/dense_1/bias"]["sha256"];
    assert_eq!(sha256_hex(&std::fs::read(point.join("layers/dense_1/bias.raw")).unwrap()), bias.as_str().unwrap());
}

/// A file of the SavedModel fixtures.
fn savedmodel_file(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("savedmodel/{rel}"))).unwrap()
}
