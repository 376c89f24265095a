//! Pickles that run code on `torch.load`, one per kind of global picklescan's and modelscan's
//! test suites use (tests/fixtures/gen/make_malicious.py, which checked that torch.load runs
//! each traced payload): each is mounted and read, flagged in info.json and by `wfs scan`, and
//! its sentinel file never appears.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

#[test]
fn malicious_pickles_are_flagged_and_never_run() {
    let cases = load_json(&fixture("malicious/cases.json"));
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let source = fixture(&format!("malicious/{file}"));
        let sentinel = case["sentinel"].as_str().map(Path::new);
        if let Some(s) = sentinel {
            let _ = std::fs::remove_file(s);
        }
        {
            let mount = Mount::new(&source, &[]);
            let out = Command::new("grep").args(["-r", "-c", "."]).arg(&mount.point).output().unwrap();
            assert!(out.status.success() || out.status.code() == Some(1), "{file}");
            let info: Value = serde_json::from_str(&mount.text("info.json")).unwrap();
            let verdicts = &info["pickle_globals"]["data.pkl"];
            let dangerous = case["dangerous"].as_array().unwrap();
            for global in dangerous {
                assert_eq!(verdicts[global.as_str().unwrap()], "dangerous", "{file}: {global} in {info}");
            }
            assert_eq!(info["unsafe_globals"].as_u64(), Some(dangerous.len() as u64), "{file}: {info}");
        }
        let scan = wfs().args(["scan", "--json"]).arg(&source).output().unwrap();
        assert_eq!(scan.status.code(), Some(1), "{file}");
        let report: Value = serde_json::from_slice(&scan.stdout).unwrap();
        assert_eq!(report["verdict"], "dangerous", "{file}");
        if let Some(s) = sentinel {
            assert!(!s.exists(), "{file}: the pickle ran code ({} exists)", s.display());
        }
    }
}

/// Every benign fixture and real-world file scans without a dangerous global; the ones with
/// globals outside the allow-list are the pickled modules and classes the README names.
#[test]
fn benign_files_scan_clean() {
    let mut paths: Vec<std::path::PathBuf> = ["ckpt", "gguf", "h5", "keras3", "numpy", "onnx", "order", "safetensors", "savedmodel", "tflite"]
        .iter()
        .map(|d| fixture(d))
        .collect();
    for entry in std::fs::read_dir(fixture("torch")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && !path.to_string_lossy().ends_with(".json") {
            paths.push(path);
        }
    }
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real-models");
    if real.is_dir() {
        paths.push(real);
    }
    let out = wfs().args(["scan", "--json"]).args(&paths).output().unwrap();
    let mut unknown = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let report: Value = serde_json::from_str(line).unwrap();
        // Keras 3's npz store under the TensorFlow backend pickles each variable as
        // functools.partial(ResourceVariable, ...): np.load(allow_pickle=True) calls it.
        if report["path"].as_str().unwrap().ends_with("numpy/model.weights.npz") {
            assert_eq!(report["dangerous"], serde_json::json!(["functools.partial"]), "{line}");
            continue;
        }
        assert_ne!(report["verdict"], "dangerous", "{line}");
        if report["verdict"] == "unknown" {
            unknown.push(Path::new(report["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    // The Keras npz above fails the scan (1); damaged files among the fixtures (hostile ONNX,
    // the bad real-world files) fail to open (4).
    assert!(matches!(out.status.code(), Some(1 | 4)), "{}", String::from_utf8_lossy(&out.stderr));
    unknown.sort();
    let expected_unknown = ["module.pt", "module_legacy.pt"];
    for name in expected_unknown {
        assert!(unknown.iter().any(|u| u == name), "{name} not reported unknown: {unknown:?}");
    }
    let allowed = ["module.pt", "module_legacy.pt", "mnistmodel.pt", "data.pt", "yolov5n.pt", "model_scripted.pt", "foo.pt", "foo7.pt"];
    for name in &unknown {
        assert!(allowed.contains(&name.as_str()), "{name} has globals outside the allow-list: {unknown:?}");
    }
}

#[test]
fn npz_object_member_globals_are_scanned() {
    // np.savez of a dict holding a payload: the member is left out, its globals reported.
    let source = fixture("malicious/npz_object.npz");
    let mount = Mount::new(&source, &[]);
    assert_eq!(mount.read("tensors/w.raw"), [0.0f32, 1.0, 2.0, 3.0].iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>());
    let info: Value = serde_json::from_str(&mount.text("info.json")).unwrap();
    assert_eq!(info["pickle_globals"]["layers.npy"]["posix.system"], "dangerous", "{info}");
    assert_eq!(info["unsafe_globals"], 1);
    let scan = wfs().arg("scan").arg(&source).output().unwrap();
    assert_eq!(scan.status.code(), Some(1));
    assert!(!Path::new("/tmp/wfs-malicious-sentinel-npz_object").exists());
}

#[test]
fn lone_npy_object_array_globals_are_scanned() {
    // np.save of an object array holding a payload: it mounts with the array left out, and
    // `wfs scan` reports its globals instead of failing to open it.
    let source = fixture("malicious/npy_object.npy");
    let mount = Mount::new(&source, &[]);
    let info: Value = serde_json::from_str(&mount.text("info.json")).unwrap();
    assert_eq!(info["pickle_globals"]["npy_object.npy"]["posix.system"], "dangerous", "{info}");
    assert_eq!(info["unsafe_globals"], 1);
    let scan = wfs().arg("scan").arg(&source).output().unwrap();
    assert_eq!(scan.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&scan.stdout).contains("dangerous: posix.system"));
    assert!(!Path::new("/tmp/wfs-malicious-sentinel-npy_object").exists());
}
