//! TorchScript archives (tests/fixtures/torchscript, written by torch.jit.script/trace + save):
//! tensors by state_dict() name as `torch.jit.load(...).state_dict()` returned them, constants
//! as the code names them, the code as text; a data.pkl payload never runs.

use crate::common::*;
use crate::torch::{check_tensors, check_with_numpy_load};
use serde_json::Value;
use std::process::Command;

#[test]
fn torchscript_archives_match_what_torch_jit_load_returned() {
    for name in ["scripted.pt", "traced.pt"] {
        let expect = load_json(&fixture(&format!("torchscript/{name}.expect.json")));
        let mount = Mount::new(&fixture(&format!("torchscript/{name}")), &[]);
        check_tensors(&mount, expect["tensors"].as_array().unwrap());
        check_with_numpy_load(&mount);
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        assert_eq!(info["format"], "torchscript", "{name}");
        assert!(info["code_files"].as_u64().unwrap() >= 2, "{name}: {info}");
        // grep finds an op of the forward in the code/ text, and no source map is shown.
        let op = expect["code"].as_str().unwrap();
        let out = Command::new("grep").args(["-rlF", op]).arg(mount.path("code")).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("code/__torch__.py"), "{name}: {op} not found in code/");
        let out = Command::new("find").arg(mount.path("code")).args(["-name", "*.debug_pkl"]).output().unwrap();
        assert!(out.stdout.is_empty(), "{name}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn torchscript_code_is_the_archive_member_byte_for_byte() {
    let source = fixture("torchscript/scripted.pt");
    let mount = Mount::new(&source, &[]);
    let out = Command::new("unzip").args(["-p"]).arg(&source).arg("scripted/code/__torch__.py").output().unwrap();
    assert!(out.status.success() && !out.stdout.is_empty());
    assert_eq!(mount.read("code/__torch__.py"), out.stdout);
}

#[test]
fn torchscript_payload_in_data_pkl_never_runs() {
    let sentinel = std::path::Path::new("/tmp/wfs-torchscript-sentinel");
    let _ = std::fs::remove_file(sentinel);
    let mount = Mount::new(&fixture("torchscript/hostile_os_system.pt"), &[]);
    let out = Command::new("grep").args(["-r", "-c", "."]).arg(&mount.point).output().unwrap();
    assert!(out.status.success() || out.status.code() == Some(1));
    let object: Value = serde_json::from_slice(&mount.read("object.json")).unwrap();
    assert_eq!(object["payload"]["__class__"], "posix.system");
    assert!(!sentinel.exists(), "the payload ran");
}
