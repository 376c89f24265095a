//! Arbitrary bytes as a safetensors file: the header length, the JSON header, the reference
//! reader's validation rules; every tensor of an accepted file read back, and its tree checked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wfs::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = fuzzing::open_format("safetensors", data) {
        fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
