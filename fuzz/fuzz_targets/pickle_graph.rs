//! Pickles that share their objects in every way (`wfs::fuzzing::pickle_graph` builds one from
//! the input): the walk over the object graph must visit each object once, so what it writes
//! grows with the pickle, never with the number of paths through it; the tree is checked.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pkl = wfs::fuzzing::pickle_graph(data);
    let model = wfs::fuzzing::torch_pickle(&pkl).expect("a well-formed pickle mounts");
    // Each object is written once, and each reference costs at most its path (200 levels of
    // `k7/`, 600 bytes) and a little JSON: anything more is a walk that unfolded the graph.
    let written: u64 = model.files.iter().map(|f| f.bytes.len()).sum();
    let references = 8 * data.len() as u64 + 1;
    assert!(written <= references * 1024 * 201, "{written} bytes written for {} input bytes", data.len());
    // A shared tensor is named once per reference followed, and each is followed once.
    assert!(model.tensors.len() as u64 <= references, "{} tensors for {} input bytes", model.tensors.len(), data.len());
    wfs::fuzzing::read_all(&model, 1 << 20);
    let tree = wfs::tree::Tree::build(model, "fuzz");
    if let Err(why) = wfs::fuzzing::check_tree(&tree) {
        panic!("{why}");
    }
});
