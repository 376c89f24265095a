//! Arbitrary bytes as a zip archive (`.keras` or zipped SavedModel): the zip reader, member
//! handling (stored members in place, deflated ones within the budget) and the readers behind.
//! HDF5 content is left out: that parser is the HDF5 C library's, not ours.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use wfs::formats;

fuzz_target!(|data: &[u8]| {
    if wfs::fuzzing::format_of(data) != Some("zip-archive") {
        return;
    }
    wfs::fuzzing::read_zip_members(data, 1 << 20);
    // Weights inside a .keras are HDF5 files: keep the C library out of the run.
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
