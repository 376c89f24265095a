//! A zarr array from fuzzed metadata (`.zarray` or `zarr.json`, the first part) whose every
//! chunk is the second part: the metadata checks and every codec (zstd, zlib, gzip, blosc,
//! crc32c, byte order, transpose, sharding), each bounded by the chunk's declared size.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wfs::fuzzing;

fuzz_target!(|data: &[u8]| {
    let parts = fuzzing::split_parts(data);
    let chunk = parts.get(1).copied().unwrap_or(&[]);
    if let Ok(model) = fuzzing::zarr_array(parts[0], chunk) {
        fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
