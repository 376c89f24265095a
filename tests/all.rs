//! The integration tests, one module per file, linked as one test binary: every test binary
//! links the static HDF5 and all of wfs's dependencies, so one binary saves a link per file.
//! A test's name keeps its file: `cargo test --release --test all -- keras3::` runs
//! tests/keras3.rs. Adding tests/NAME.rs means adding `mod NAME;` here (a test checks it).

mod common;

mod checkpoints;
mod cli;
mod diff;
mod dcp;
mod deploy;
mod doc_links;
mod export;
mod gguf;
mod hostile;
mod hostile_corpus;
mod inference_formats;
mod jax;
mod keras3;
mod keras_h5;
mod keras_order;
mod lifecycle;
mod malicious;
mod onnx;
mod outputs;
mod paddle;
mod properties;
mod quantized;
mod real_models;
mod remote;
mod safetensors_numpy;
mod savedmodel;
mod stress;
mod tensor_names;
mod tflite;
mod tools;
mod torch;
mod torchscript;
mod tree_digests;

/// Every tests/*.rs is a module here: Cargo no longer finds test files by itself
/// (`autotests = false`), so a file left out would never run.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let declared = include_str!("all.rs");
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for entry in std::fs::read_dir(tests).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "all") {
            assert!(declared.contains(&format!("\nmod {module};\n")), "tests/{name} is not declared in tests/all.rs");
        }
    }
}
