//! Keras HDF5 fixtures written by real Keras (tests/fixtures/gen/make_keras_h5.py), mounted for
//! real and read with cat-like reads and numpy.

use crate::common::*;

fn check_fixture(name: &str) {
    let source = fixture(&format!("h5/{name}"));
    let mount = Mount::new(&source, &[]);
    check_expect(&mount, &load_json(&fixture(&format!("h5/{name}.expect.json"))));
    let npz = fixture(&format!("h5/{name}.expect.npz"));
    if npz.exists() {
        check_with_numpy(&mount, &npz);
    }
}

#[test]
fn keras2_functional_full_model() {
    check_fixture("k2_functional.h5");
}

#[test]
fn keras2_sequential_full_model() {
    check_fixture("k2_sequential.h5");
}

#[test]
fn keras2_weights_only() {
    check_fixture("k2_weights.h5");
}

#[test]
fn keras3_legacy_h5() {
    check_fixture("k3_legacy.h5");
}

#[test]
fn gzip_shuffle_chunks() {
    check_fixture("v_gzip_shuffle.h5");
}

#[test]
fn fletcher32_and_lzf_chunks() {
    check_fixture("v_fletcher_lzf.h5");
}

#[test]
fn big_endian_datasets() {
    check_fixture("v_bigendian.h5");
}

#[test]
fn float16_datasets() {
    check_fixture("v_float16.h5");
}

#[test]
fn libver_latest_chunk_indexes() {
    check_fixture("v_latest.h5");
}

#[test]
fn user_block() {
    check_fixture("v_userblock.h5");
}

#[test]
fn compact_datasets() {
    check_fixture("v_compact.h5");
}

#[test]
fn unallocated_dataset_reads_fill_value() {
    check_fixture("v_unallocated.h5");
}

#[test]
fn plain_hdf5_under_datasets() {
    check_fixture("plain_data.h5");
}

/// Variable-length string datasets (h5py's default for `str`; Keras configs stored as datasets)
/// are string tensors, none skipped; numpy loads each as the |S array of its encoded elements.
#[test]
fn variable_length_string_datasets() {
    check_fixture("v_strings.h5");
    let mount = Mount::new(&fixture("h5/v_strings.h5"), &[]);
    let info: serde_json::Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert!(info.get("skipped").is_none_or(|s| s.as_array().unwrap().is_empty()), "skipped: {}", info["skipped"]);
    assert_eq!(mount.text("datasets/grid.dtype"), "string\n");
}
