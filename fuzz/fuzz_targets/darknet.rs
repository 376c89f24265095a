//! Arbitrary bytes as Darknet weights and their cfg: the header, the cfg's sections and every layer's arrays checked.
//! The input is split at its first NUL byte: the text file before it, the binary after it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (text, binary) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    if let Ok(model) = wfs::fuzzing::pair("darknet", binary, text) {
        wfs::fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = wfs::fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
