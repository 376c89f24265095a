//! Arbitrary bytes as a whole `torch.save` file: the zip container (record prefix, byteorder,
//! storages as members) and the legacy format (its four pickles, then storages located by
//! walking the file), with every tensor read back and the tree checked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use wfs::formats;

fuzz_target!(|data: &[u8]| {
    if !matches!(wfs::fuzzing::format_of(data), Some("zip-archive" | "pytorch-legacy")) {
        return;
    }
    // Zips holding HDF5 (.keras) would run the HDF5 C library, which is not ours to fuzz.
    if data.windows(8).any(|w| w == b"\x89HDF\r\n\x1a\n") {
        return;
    }
    let options = formats::ReadOptions { cache: Arc::new(wfs::cache::ChunkCache::new(1 << 20)) };
    if let Ok(model) = formats::open(formats::Source::Bytes(data.to_vec()), &options) {
        wfs::fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = wfs::fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
