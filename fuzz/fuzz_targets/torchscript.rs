//! Arbitrary bytes as a TorchScript archive: a zip whose data.pkl, constants.pkl and code/
//! members are interpreted as data, never run.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = wfs::fuzzing::open_format("torchscript", data) {
        wfs::fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = wfs::fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
