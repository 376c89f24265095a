//! Arbitrary bytes as a PyTorch `data.pkl`: the non-executing pickle interpreter (every opcode
//! of protocols 0-5, its limits), then the walk that finds tensors (rebuild functions, storage
//! views with arbitrary offsets, sizes and strides, numpy arrays, pickled modules) and writes
//! `object.json`. Every tensor is read back and the tree checked.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = wfs::fuzzing::torch_pickle(data) {
        wfs::fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = wfs::fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
