//! Arbitrary bytes as an ONNX model (the protobuf walker, typed-field decoding, sparse
//! densifying), read from memory: external data is refused there, never looked for.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wfs::fuzzing::format_of(data);
    if let Ok(model) = wfs::fuzzing::open_format("onnx", data) {
        wfs::fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = wfs::fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
