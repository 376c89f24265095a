//! A whole checkpoint from fuzzed table entries (written into a valid table, so the fuzzer gets
//! past the block checksums to the entries, slices, strings and object graph) and a data file:
//! parts are the data file, then one entry each (key length byte, key, value).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wfs::fuzzing;

fuzz_target!(|data: &[u8]| {
    let parts = fuzzing::split_parts(data);
    let Some((shard, entries)) = parts.split_first() else { return };
    let index = fuzzing::write_table(&fuzzing::table_entries(entries), 4, false);
    if let Ok(model) = fuzzing::checkpoint(&index, shard) {
        fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
