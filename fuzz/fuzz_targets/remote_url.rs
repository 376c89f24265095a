//! Arbitrary text as a source URL (http, https, s3, hf): parsed without a request, never a
//! panic, and never shown with its query, fragment or password; and as a `Link` header.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = wfs::fuzzing::remote_url(&String::from_utf8_lossy(data)) {
        panic!("{why}");
    }
});
