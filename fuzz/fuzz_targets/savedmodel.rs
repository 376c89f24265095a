//! A SavedModel zip from fuzzed parts: `saved_model.pb`, `keras_metadata.pb` (left out when
//! empty), the variables' data file, then the variables' table entries (key length byte, key,
//! value; written into a valid table). Exercises the SavedModel and Keras metadata protobufs
//! and the layer view built from them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use wfs::fuzzing;

fn zip(members: &[(&str, &[u8])]) -> Option<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        zip.start_file(*name, stored).ok()?;
        zip.write_all(bytes).ok()?;
    }
    Some(zip.finish().ok()?.into_inner())
}

fuzz_target!(|data: &[u8]| {
    let parts = fuzzing::split_parts(data);
    let [saved, metadata, shard, entries @ ..] = parts.as_slice() else { return };
    let index = fuzzing::write_table(&fuzzing::table_entries(entries), 4, false);
    let mut members = vec![("saved_model.pb", *saved)];
    if !metadata.is_empty() {
        members.push(("keras_metadata.pb", *metadata));
    }
    if !entries.is_empty() {
        members.push(("variables/variables.index", index.as_slice()));
        members.push(("variables/variables.data-00000-of-00001", *shard));
    }
    let Some(bytes) = zip(&members) else { return };
    let options = wfs::formats::ReadOptions { cache: std::sync::Arc::new(wfs::cache::ChunkCache::new(1 << 20)) };
    if let Ok(model) = wfs::formats::open(wfs::formats::Source::Bytes(bytes), &options) {
        fuzzing::read_all(&model, 1 << 20);
        let tree = wfs::tree::Tree::build(model, "fuzz");
        if let Err(why) = fuzzing::check_tree(&tree) {
            panic!("{why}");
        }
    }
});
