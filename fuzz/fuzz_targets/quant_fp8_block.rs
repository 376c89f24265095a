//! A safetensors model quantized with `fp8` from raw bytes (`fuzzing::quantized`): the config
//! from the first bytes, the parts' shapes, group counts and packed widths from the header;
//! every dequantized weight decoded, then `Tree::build` and its invariants.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wfs::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = fuzzing::quantized("fp8", data) {
        fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
