//! Hostile HDF5 files (tests/fixtures/gen/make_hostile.py): damaged datasets are skipped with a
//! reason in info.json, hostile layer names become safe entries, nothing escapes the mount.

use crate::common::*;
use serde_json::Value;

fn skipped(mount: &Mount) -> Vec<String> {
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    info["skipped"].as_array().map(|a| a.iter().map(|s| s["path"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn data_address_past_the_end_is_skipped_not_served() {
    let m = Mount::new(&fixture("hostile/absurd_offset.h5"), &[]);
    assert_eq!(skipped(&m), vec!["datasets/far"]);
    assert_eq!(m.read("datasets/fine.raw"), [0i32, 1, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    assert!(!m.path("datasets/far.npy").exists());
}

#[test]
fn overflowing_shape_is_skipped() {
    let m = Mount::new(&fixture("hostile/absurd_shape.h5"), &[]);
    assert_eq!(skipped(&m), vec!["datasets/huge"]);
    assert_eq!(m.text("datasets/fine.shape"), "4\n");
}

#[test]
fn hostile_layer_names_become_safe_directories() {
    let m = Mount::new(&fixture("hostile/hostile_keras.h5"), &[]);
    let value = |rel: &str| f32::from_le_bytes(m.read(rel)[..4].try_into().unwrap());
    // datasets were written with the layer's position among distinct names as their value
    assert_eq!(value("layers/%2E%2E/kernel.raw"), 0.0);
    assert_eq!(value("layers/a%2Fb/kernel.raw"), 1.0);
    assert_eq!(value("layers/ok/kernel.raw"), 5.0);
    let long: Vec<String> = std::fs::read_dir(m.path("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("LLL"))
        .collect();
    assert_eq!(long.len(), 1);
    assert!(long[0].len() <= 255);
    assert_eq!(value(&format!("layers/{}/kernel.raw", long[0])), 3.0);
    assert_eq!(std::fs::read_link(m.path("layers/0")).unwrap().to_str(), Some("%2E%2E"));
    assert_eq!(std::fs::read_link(m.path("layers/1")).unwrap().to_str(), Some("a%2Fb"));
    let root = std::fs::canonicalize(&m.point).unwrap();
    for i in 0..7 {
        let target = std::fs::canonicalize(m.path(&format!("layers/{i}"))).unwrap();
        assert!(target.starts_with(root.join("layers")), "layers/{i} -> {}", target.display());
    }
}

#[test]
fn split_name_attributes_and_empty_float64_lists() {
    let m = Mount::new(&fixture("hostile/split_names.h5"), &[]);
    for i in 0..5 {
        let link = std::fs::read_link(m.path(&format!("layers/{i}"))).unwrap();
        assert_eq!(link.to_str().unwrap(), format!("layer_{i}"));
        for k in 0..3i16 {
            let rel = format!("layers/layer_{i}/w{k}.raw");
            if i == 2 {
                assert!(!m.path(&rel).exists());
                continue;
            }
            let want: Vec<u8> = std::iter::repeat_n(10 * i as i16 + k, k as usize + 1).flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(m.read(&rel), want, "{rel}");
        }
    }
    assert!(m.path("layers/layer_2").is_dir());
}

#[test]
fn a_hundred_thousand_layer_names_mount_quickly() {
    let started = std::time::Instant::now();
    let m = Mount::new(&fixture("hostile/many_layers.h5"), &[]);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(std::fs::read_link(m.path("layers/99999")).unwrap().to_str(), Some("l099999"));
    assert!(m.path("layers/l099999").is_dir());
    assert_eq!(m.read("layers/0/w.raw"), [0f32, 1.0, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    assert_eq!(std::fs::read_dir(m.path("layers")).unwrap().count(), 200_000);
}

#[test]
fn groups_nested_too_deep_are_cut_and_reported() {
    let m = Mount::new(&fixture("hostile/deep_groups.h5"), &[]);
    assert_eq!(m.read("datasets/top.raw"), vec![0, 1]);
    let info: Value = serde_json::from_slice(&m.read("info.json")).unwrap();
    let skipped = info["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["reason"].as_str().unwrap().contains("too deep"));
    assert_eq!(skipped[0]["path"].as_str().unwrap().matches('/').count(), 65);
}
