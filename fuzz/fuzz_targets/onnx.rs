//! Arbitrary bytes as an ONNX model (the protobuf walker, typed-field decoding, sparse
//! densifying), read from memory: external data is refused there, never looked for.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use wfs::formats::onnx;
use wfs::source::Blob;

fuzz_target!(|data: &[u8]| {
    let blob = Blob::Memory(Arc::new(data.to_vec()));
    let _ = onnx::sniff(&blob);
    if let Ok(model) = onnx::read(&blob, None) {
        wfs::fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = wfs::fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
