//! PaddlePaddle `.pdparams` (tests/fixtures/paddle, written by paddle.save; real-models
//! paddle_*): tensors as `paddle.load` returned them; a pickled payload never runs.

use crate::common::*;
use crate::torch::{check_tensors, check_with_numpy_load};
use serde_json::Value;

#[test]
fn pdparams_match_what_paddle_load_returned() {
    let expect = load_json(&fixture("paddle/layers.pdparams.expect.json"));
    let mount = Mount::new(&fixture("paddle/layers.pdparams"), &[]);
    check_tensors(&mount, expect["tensors"].as_array().unwrap());
    check_with_numpy_load(&mount);
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert_eq!(info["format"], "paddle-pdparams");
}

#[test]
fn real_pdparams_match_their_oracles() {
    let Some(root) = real_models() else { return };
    let mut checked = 0;
    for (item, oracle) in real_items(&root) {
        for part in oracle["parts"].as_array().into_iter().flatten().filter(|p| p["format"] == "paddle-pdparams") {
            let mount = Mount::new(&root.join(&item).join(part["path"].as_str().unwrap()), &[]);
            check_tensors(&mount, part["tensors"].as_array().unwrap());
            checked += 1;
        }
    }
    assert!(checked >= 1, "no paddle-pdparams item in the corpus");
}

#[test]
fn pdparams_payload_never_runs() {
    let sentinel = std::path::Path::new("/tmp/wfs-paddle-sentinel");
    let _ = std::fs::remove_file(sentinel);
    let mount = Mount::new(&fixture("paddle/hostile_os_system.pdparams"), &[]);
    let object: Value = serde_json::from_slice(&mount.read("object.json")).unwrap();
    assert_eq!(object["payload"]["__class__"], "posix.system");
    assert_eq!(mount.read("tensors/w.raw").len(), 12);
    assert!(!sentinel.exists(), "the payload ran");
}
