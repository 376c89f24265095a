//! The bundle `.index` table reader over arbitrary bytes, and the protobuf decoding of what it
//! yields (header and entries).
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::Arc;
use wfs::formats::bundle::{BundleEntryProto, BundleHeaderProto, read_table};
use wfs::source::Blob;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = read_table(&Blob::Memory(Arc::new(data.to_vec()))) else { return };
    for (key, value) in entries {
        if key.is_empty() {
            let _ = BundleHeaderProto::decode(value.as_slice());
        } else {
            let _ = BundleEntryProto::decode(value.as_slice());
        }
    }
});
