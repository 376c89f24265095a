//! `Tree::build` over arbitrary models: one line per entry, its first character saying what it
//! is (`t` tensor, `f` file, `d` directory, `p` part, `l` link to the directory named after
//! `>`), the rest its raw path. The tree must hold safe, unique names, links that resolve
//! inside the mount, and `model.safetensors` files that parse by the format's rules.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use wfs::dtype::DType;
use wfs::model::{InMemory, Model, ModelLink, Part, Tensor};

fn path(text: &str) -> Vec<String> {
    // Raw paths are kept as readers hand them over, empty components included.
    text.split('/').map(str::to_string).collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut model = Model::default();
    for line in text.split('\n').take(2000) {
        let mut chars = line.chars();
        let kind = chars.next();
        let rest = chars.as_str();
        match kind {
            Some('t') => model.tensors.push(Tensor::new(path(rest), DType::U8, vec![rest.len() as u64], Arc::new(InMemory(rest.as_bytes().into())))),
            Some('f') => model.add_file(path(rest), rest.as_bytes().to_vec()),
            Some('d') => model.dirs.push(path(rest)),
            Some('p') => model.parts.push(Part { path: path(rest), info: Default::default(), skipped: Vec::new() }),
            Some('l') => {
                let (from, to) = rest.split_once('>').unwrap_or((rest, ""));
                model.links.push(ModelLink { path: path(from), target: path(to) });
            }
            _ => {}
        }
    }
    let tree = wfs::tree::Tree::build(model, "fuzz");
    if let Err(why) = wfs::fuzzing::check_tree(&tree) {
        panic!("{why}");
    }
});
