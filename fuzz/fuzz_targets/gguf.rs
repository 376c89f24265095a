//! A GGUF file from raw bytes: header, metadata of every value type, tensor infos and layout;
//! every tensor read back (quantized ones decoded), then `Tree::build` and its invariants.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wfs::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = fuzzing::open_format("gguf", data) {
        fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
