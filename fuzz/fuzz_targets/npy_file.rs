//! Arbitrary bytes as a `.npy` file (the header parser, dtypes, big-endian and Fortran-order
//! arrays) and as the stored and deflated members of an `.npz` (inflated per chunk through a
//! small cache): every tensor read back, and the tree checked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wfs::fuzzing;

fuzz_target!(|data: &[u8]| {
    for model in fuzzing::numpy(data, 1 << 16).into_iter().flatten() {
        fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
