//! PyTorch distributed checkpoints (tests/fixtures/dcp, written by torch.distributed.checkpoint:
//! one process, and two gloo processes saving sharded DTensors): every tensor as `dcp.load`
//! returned it, its chunks tiled back; damaged chunk metadata is reported, a payload never runs.

use crate::common::*;
use crate::torch::{check_tensors, check_with_numpy_load};
use serde_json::Value;

#[test]
fn distributed_checkpoints_match_what_dcp_load_returned() {
    for name in ["single", "sharded"] {
        let expect = load_json(&fixture(&format!("dcp/{name}.expect.json")));
        let mount = Mount::new(&fixture(&format!("dcp/{name}")), &[]);
        check_tensors(&mount, expect["tensors"].as_array().unwrap());
        check_with_numpy_load(&mount);
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        assert_eq!(info["format"], "pytorch-dcp", "{name}");
        assert!(info.get("skipped").is_none(), "{name}: {info}");
        let object: Value = serde_json::from_slice(&mount.read("object.json")).unwrap();
        assert_eq!(object, expect["objects"], "{name}: object.json");
    }
}

/// A tensor sharded on its columns (two chunks in two files) reads the same bytes in any range.
#[test]
fn chunked_tensors_read_any_range() {
    let mount = Mount::new(&fixture("dcp/sharded"), &[]);
    let whole = mount.read("tensors/emb/weight.raw");
    assert_eq!(whole.len(), 80);
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sys\nf = open(sys.argv[1], 'rb')\nfor a in range(80):\n    for b in range(a, 81):\n        f.seek(a); sys.stdout.buffer.write(f.read(b - a))")
        .arg(mount.path("tensors/emb/weight.raw"))
        .output()
        .unwrap();
    let whole = &whole;
    let expected: Vec<u8> = (0..80).flat_map(|a| (a..=80).flat_map(move |b| whole[a..b].to_vec())).collect();
    assert!(out.stdout == expected, "partial reads differ from the whole");
}

#[test]
fn damaged_chunk_metadata_is_reported_and_the_rest_mounts() {
    for (name, tensor, reason) in [("bad_overlap", "fc.weight", "overlap"), ("bad_past_end", "counts", "past the end of __1_0.distcp")] {
        let mount = Mount::new(&fixture(&format!("dcp/{name}")), &[]);
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        let skipped = info["skipped"].as_array().unwrap_or_else(|| panic!("{name}: {info}"));
        assert_eq!(skipped.len(), 1, "{name}: {info}");
        assert_eq!(skipped[0]["name"], tensor);
        assert!(skipped[0]["reason"].as_str().unwrap().contains(reason), "{name}: {info}");
        assert_eq!(info["tensors"], 4);
    }
}

#[test]
fn metadata_payload_never_runs() {
    let sentinel = std::path::Path::new("/tmp/wfs-dcp-sentinel");
    let _ = std::fs::remove_file(sentinel);
    let mount = Mount::new(&fixture("dcp/bad_os_system"), &[]);
    assert_eq!(mount.text("tensors.tsv").lines().count(), 6);
    assert!(!sentinel.exists(), "the payload ran");
}
