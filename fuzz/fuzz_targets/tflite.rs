//! Arbitrary bytes as a TensorFlow Lite FlatBuffer: every offset, count and vtable checked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use wfs::formats::tflite;
use wfs::source::Blob;

fuzz_target!(|data: &[u8]| {
    let blob = Blob::Memory(Arc::new(data.to_vec()));
    if let Ok(model) = tflite::read(&blob) {
        wfs::fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = wfs::fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
