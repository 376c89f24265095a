//! Keras naming over arbitrary weight lists: Keras 2 `weight_path` (layer name, then weight
//! names, one per line) and Keras 3 variable names by index (class, then a JSON config).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let layer = lines.next().unwrap_or_default();
    let weights: Vec<&str> = lines.collect();
    for weight in &weights {
        let path = wfs::fuzzing::keras_weight_path(layer, weight);
        assert!(!path.is_empty(), "{layer:?}/{weight:?} has no path");
    }
    let kind = wfs::fuzzing::keras3_snake_case(layer);
    let config: Option<serde_json::Value> = weights.last().and_then(|w| serde_json::from_str(w).ok());
    let (names, trainable) = wfs::fuzzing::keras3_variable_names(Some(&kind), config.as_ref(), weights.len());
    assert!(names.is_empty() || names.len() == weights.len(), "{kind}: {} names for {}", names.len(), weights.len());
    assert!(trainable <= weights.len());
});
