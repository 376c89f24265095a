//! Name sanitising: any string becomes one safe component, deterministically, at most `max`
//! bytes, and distinct names stay distinct.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wfs::names::{sanitize, sanitize_within, split_path};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (a, b) = text.split_once('\u{1}').unwrap_or((&text, ""));
    let safe = sanitize(a);
    if let Some(why) = wfs::fuzzing::unsafe_name(&safe) {
        panic!("{a:?} -> {safe:?} is {why}");
    }
    assert_eq!(safe, sanitize(a), "not deterministic");
    // The empty name and NUL both read `%00` (the tree suffixes such twins); others stay apart.
    if a != b && !a.is_empty() && !b.is_empty() {
        assert_ne!(safe, sanitize(b), "{a:?} and {b:?} collide");
    }
    let max = 16 + data.first().copied().unwrap_or(0) as usize;
    assert!(sanitize_within(a, max).len() <= max, "{a:?} within {max}");
    for part in split_path(a) {
        assert!(!part.is_empty() && !part.contains('/'));
    }
});
