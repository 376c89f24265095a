//! The mount tree, built once from a `Model`: inodes, names made safe, and exact file sizes.

use crate::export::Safetensors;
use crate::model::{Model, Role, TensorBytes, Tensor};
use crate::names::{sanitize, sanitize_within, shorten};
use crate::npy;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub type Ino = u64;
pub const ROOT: Ino = 1;

/// What a regular file holds.
#[derive(Clone)]
pub enum Content {
    /// Bytes from a reader or made at mount: configs, assets, info.json, tensors.tsv.
    Bytes(Arc<dyn TensorBytes>),
    /// One of the four files of tensor `.0`, made from the tensor on each read (so that a
    /// model's millions of small files cost no memory of their own).
    Tensor(usize, TensorFile),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorFile {
    /// The npy header, then the data (bfloat16 widened to float32).
    Npy,
    /// The data as the source holds it (little-endian).
    Raw,
    Shape,
    DType,
}

/// The text of a tensor's `.shape` file.
pub fn shape_text(t: &Tensor) -> String {
    format!("{}\n", t.shape.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
}

/// The text of a tensor's `.dtype` file.
pub fn dtype_text(t: &Tensor) -> String {
    format!("{}\n", t.dtype.name())
}

pub enum Node {
    /// `entries` in insertion order (their names are the tree's `names`); `index` finds a name
    /// in a large directory (small ones are scanned, which saves a map per layer directory);
    /// `subdirs` counts the entries that are directories (for `nlink`).
    Dir { entries: Vec<Ino>, index: Option<Box<HashMap<String, Ino>>>, subdirs: u32 },
    File { content: Content, size: u64 },
    Symlink(String),
}

pub struct Tree {
    nodes: Vec<Node>,
    parents: Vec<Ino>,
    names: Vec<String>,
    pub tensors: Vec<Tensor>,
}

/// The top level of the mount or of one part: where its info.json and tensors.tsv go.
struct TopLevel {
    raw: Vec<String>,
    dir: Ino,
    /// Components of its safe path, stripped from the tensor paths its tensors.tsv lists.
    depth: usize,
    info: Map<String, Value>,
    info_ino: Ino,
    tsv_ino: Ino,
    tsv: String,
    tensors: usize,
    bytes: u64,
    /// Its `model.safetensors`, and for each of its tensors (in `tensors.tsv` order) the id and
    /// what its key has before the tensor's name: nothing for the innermost top level, else the
    /// path from this one to the part it lies in (`ckpt-1/`).
    safetensors: Option<(Ino, Vec<(usize, String)>)>,
}

/// What building the tree knows about directories: the inode of every raw directory path made
/// so far (so that links resolve to what was made), and which names are reserved in them.
struct Dirs {
    known: HashMap<Vec<String>, Ino>,
    /// Safe names of the links to come, by raw directory path.
    link_names: HashMap<Vec<String>, HashSet<String>>,
    /// Raw paths of the `layers/` directories, whose decimal names are the index links'.
    layer_dirs: HashSet<Vec<String>>,
}

impl Dirs {
    /// True if safe name `name` in raw directory `dir` belongs to a link.
    fn reserved(&self, dir: &[String], name: &str) -> bool {
        let decimal = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
        (decimal && self.layer_dirs.contains(dir)) || self.link_names.get(dir).is_some_and(|n| n.contains(name))
    }
}

/// What a tree offers beyond the model's own files.
#[derive(Clone, Copy, Debug)]
pub struct TreeOptions {
    /// `model.safetensors` at each top level (docs/tree.md 8).
    pub safetensors: bool,
    /// `model.safetensors` holds each quantized layer's dequantized weight in place of its
    /// stored parts (`wfs convert --dequantize`, docs/tree.md 7.3).
    pub dequantize: bool,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions { safetensors: true, dequantize: false }
    }
}

/// The name of the assembled safetensors file at each top level.
pub const SAFETENSORS_FILE: &str = "model.safetensors";

/// Directories up to this many entries are searched by a scan rather than a map.
const SCANNED_DIR_LEN: usize = 16;

const TENSOR_SUFFIXES: [&str; 4] = [".npy", ".raw", ".shape", ".dtype"];

const TSV_HEADER: &str = "path\tdtype\tshape\tbytes\tname\n";

/// A name as one `tensors.tsv` field: backslash, tab, newline and carriage return escaped as
/// `\\`, `\t`, `\n`, `\r` (names are the source's own, and may hold any of them).
fn tsv_field(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(['\\', '\t', '\n', '\r']) {
        return name.into();
    }
    name.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r").into()
}

impl Tree {
    /// Builds the whole tree with the default options. `source` is what `info.json` reports as
    /// the source.
    pub fn build(model: Model, source: &str) -> Tree {
        Self::build_with(model, source, TreeOptions::default())
    }

    pub fn build_with(model: Model, source: &str, options: TreeOptions) -> Tree {
        let mut tree = Tree {
            nodes: vec![Node::Dir { entries: Vec::new(), index: None, subdirs: 0 }],
            parents: vec![ROOT],
            names: vec![String::new()],
            tensors: Vec::new(),
        };
        // Link names are promised, and so are decimal names in `layers/` (`layers/<i>` is the
        // i-th layer, docs/tree.md 5, even where the order is unknown and there is no such link): a
        // directory or file that would take one gets the collision suffix instead.
        let mut link_names: HashMap<Vec<String>, HashSet<String>> = HashMap::new();
        for link in &model.links {
            if let Some((name, dir)) = link.path.split_last() {
                link_names.entry(dir.to_vec()).or_default().insert(sanitize(name));
            }
        }
        let tops_raw = std::iter::once(Vec::new()).chain(model.parts.iter().map(|p| p.path.clone()));
        let layer_dirs = tops_raw.map(|mut top| {
            top.push("layers".into());
            top
        });
        let mut dirs = Dirs { known: HashMap::from([(Vec::new(), ROOT)]), link_names, layer_dirs: layer_dirs.collect() };

        // The mount's top level, then each part's (a checkpoint of a directory): each gets an
        // info.json and a tensors.tsv over the tensors below it, filled in once all are placed.
        let mut root_info = Map::new();
        root_info.insert("format".into(), json!(model.format));
        root_info.insert("source".into(), json!(source));
        root_info.extend(model.info.iter().map(|(k, v)| (k.clone(), v.clone())));
        add_skipped(&mut root_info, &model.skipped);
        let part_infos = model.parts.iter().map(|p| {
            let mut info = p.info.clone();
            add_skipped(&mut info, &p.skipped);
            (p.path.clone(), info)
        });
        let mut tops = Vec::new();
        for (raw, info) in std::iter::once((Vec::new(), root_info)).chain(part_infos) {
            let dir = tree.make_dirs(&mut dirs, &raw);
            // A part at the root or at another part's place would give a directory two
            // info.json files: the first top level there keeps its own.
            if tops.iter().any(|t: &TopLevel| t.dir == dir) {
                log::warn!("part {raw:?} shares its directory with another top level; its info.json is dropped");
                continue;
            }
            let info_ino = tree.add_bytes(dir, "info.json", Vec::new());
            let tsv_ino = tree.add_bytes(dir, "tensors.tsv", Vec::new());
            // Its name is taken now, before the model's own files; its bytes come at the end.
            let safetensors = options.safetensors.then(|| (tree.add_bytes(dir, SAFETENSORS_FILE, Vec::new()), Vec::new()));
            let depth = tree.path_of(dir).len();
            let tsv = String::from(TSV_HEADER);
            tops.push(TopLevel { raw, dir, depth, info, info_ino, tsv_ino, tsv, tensors: 0, bytes: 0, safetensors });
        }

        for dir in &model.dirs {
            tree.make_dirs(&mut dirs, dir);
        }
        for file in &model.files {
            let (dir, name) = file.path.split_at(file.path.len().saturating_sub(1));
            let parent = tree.make_dirs(&mut dirs, dir);
            let name = name.first().map_or("%00", String::as_str);
            let safe = tree.unique_name(parent, &sanitize(name), &[""], &|n| dirs.reserved(dir, n));
            let size = file.bytes.len();
            tree.insert(parent, safe, Node::File { content: Content::Bytes(file.bytes.clone()), size });
        }
        for mut tensor in model.tensors {
            let (dir, name) = tensor.path.split_at(tensor.path.len().saturating_sub(1));
            let parent = tree.make_dirs(&mut dirs, dir);
            let name = name.first().map_or("%00", String::as_str);
            let longest_suffix = TENSOR_SUFFIXES.iter().map(|s| s.len()).max().unwrap_or(0);
            let base = tree.unique_name(parent, &sanitize_within(name, 255 - longest_suffix), &TENSOR_SUFFIXES, &|_| false);
            let id = tree.tensors.len();
            let raw_len = tensor.bytes.len();
            let header_len = npy::header(tensor.dtype, &tensor.shape).len() as u64;
            let npy_len = tensor.npy_data_len().map(|data| header_len + data);
            let shape = shape_text(&tensor);
            let sizes = [npy_len, Some(raw_len), Some(shape.len() as u64), Some(dtype_text(&tensor).len() as u64)];
            let kinds = [TensorFile::Npy, TensorFile::Raw, TensorFile::Shape, TensorFile::DType];
            for ((suffix, kind), size) in TENSOR_SUFFIXES.iter().zip(kinds).zip(sizes) {
                if let Some(size) = size {
                    tree.insert(parent, format!("{base}{suffix}"), Node::File { content: Content::Tensor(id, kind), size });
                }
            }
            let mut rel = tree.path_of(parent);
            rel.push(base);
            let innermost = tops.iter().filter(|t| tensor.path.starts_with(&t.raw)).map(|t| t.depth).max().unwrap_or(0);
            if tensor.name.is_empty() && !tensor.nameless {
                // Keras and TensorFlow names are the tensor's path below its innermost top level.
                tensor.name = rel[innermost..].join("/");
            }
            for top in tops.iter_mut().filter(|t| tensor.path.starts_with(&t.raw)) {
                let in_safetensors = match tensor.role {
                    Role::Plain => true,
                    Role::QuantizedPart => !options.dequantize,
                    Role::Dequantized => options.dequantize,
                };
                if let Some((_, keys)) = top.safetensors.as_mut().filter(|_| in_safetensors) {
                    // An unnamed tensor's key is its path below the top level (keys must differ).
                    let prefix = if tensor.nameless { rel[top.depth..].join("/") } else { rel[top.depth..innermost].iter().map(|c| format!("{c}/")).collect() };
                    keys.push((id, prefix));
                }
                let path = rel[top.depth..].join("/");
                let suffix = if npy_len.is_some() { ".npy" } else { ".raw" };
                let row = format!("{path}{suffix}\t{}\t{}\t{}\t{}\n", tensor.dtype.name(), shape.trim_end(), raw_len, tsv_field(&tensor.name));
                top.tsv.push_str(&row);
                top.tensors += 1;
                top.bytes += raw_len;
            }
            tree.tensors.push(tensor);
        }
        for mut top in tops {
            if let Some((ino, keys)) = top.safetensors.take() {
                let format = top.info.get("format").and_then(Value::as_str).unwrap_or_default();
                let tensors = keys.into_iter().map(|(id, prefix)| {
                    let tensor = &tree.tensors[id];
                    let key = if prefix.is_empty() { Cow::Borrowed(tensor.name.as_str()) } else { Cow::Owned(prefix + &tensor.name) };
                    (key, tensor)
                });
                match Safetensors::assemble(tensors, format) {
                    Ok(file) => tree.set_content(ino, Arc::new(file)),
                    Err(why) => {
                        log::warn!("{} left out: {why}", tree.path_of(ino).join("/"));
                        tree.detach(ino);
                    }
                }
            }
            top.info.insert("tensors".into(), json!(top.tensors));
            top.info.insert("bytes".into(), json!(top.bytes));
            tree.set_bytes(top.info_ino, crate::model::json_text(&Value::Object(top.info)));
            tree.set_bytes(top.tsv_ino, top.tsv.into_bytes());
        }

        for link in &model.links {
            let Some(&target_ino) = dirs.known.get(&link.target) else {
                continue;
            };
            let target_safe = tree.path_of(target_ino);
            let (dir, name) = link.path.split_at(link.path.len().saturating_sub(1));
            let parent = tree.make_dirs(&mut dirs, dir);
            let parent_safe = tree.path_of(parent);
            let target = relative(&parent_safe, &target_safe);
            let name = name.first().map_or("%00", String::as_str);
            let safe = tree.unique_name(parent, &sanitize(name), &[""], &|_| false);
            tree.insert(parent, safe, Node::Symlink(target));
        }
        tree
    }

    fn set_bytes(&mut self, ino: Ino, bytes: Vec<u8>) {
        self.set_content(ino, Arc::new(crate::model::InMemory(bytes.into())));
    }

    fn set_content(&mut self, ino: Ino, bytes: Arc<dyn TensorBytes>) {
        let size = bytes.len();
        self.nodes[(ino - 1) as usize] = Node::File { content: Content::Bytes(bytes), size };
    }

    /// Takes a file out of its directory (its inode stays, unreachable).
    fn detach(&mut self, ino: Ino) {
        let parent = self.parents[(ino - 1) as usize];
        let name = self.names[(ino - 1) as usize].clone();
        if let Some(Node::Dir { entries, index, .. }) = self.nodes.get_mut((parent - 1) as usize) {
            entries.retain(|&e| e != ino);
            if let Some(map) = index {
                map.remove(&name);
            }
        }
    }

    fn add_bytes(&mut self, parent: Ino, name: &str, bytes: Vec<u8>) -> Ino {
        let size = bytes.len() as u64;
        let content = Content::Bytes(Arc::new(crate::model::InMemory(bytes.into())));
        self.insert(parent, name.to_string(), Node::File { content, size })
    }

    fn insert(&mut self, parent: Ino, name: String, node: Node) -> Ino {
        let ino = self.nodes.len() as Ino + 1;
        let is_dir = matches!(node, Node::Dir { .. });
        self.nodes.push(node);
        self.parents.push(parent);
        self.names.push(name.clone());
        let names = &self.names;
        if let Node::Dir { entries, index, subdirs } = &mut self.nodes[(parent - 1) as usize] {
            entries.push(ino);
            *subdirs += u32::from(is_dir);
            match index {
                Some(map) => {
                    map.insert(name, ino);
                }
                None if entries.len() > SCANNED_DIR_LEN => {
                    let map = entries.iter().map(|&i| (names[(i - 1) as usize].clone(), i)).collect();
                    *index = Some(Box::new(map));
                }
                None => {}
            }
        }
        ino
    }

    /// A name neither used in `parent` nor `reserved` for any of `base + suffix`: `base`,
    /// `base~2`, ...
    fn unique_name(&self, parent: Ino, base: &str, suffixes: &[&str], reserved: &dyn Fn(&str) -> bool) -> String {
        let free = |b: &str| {
            suffixes.iter().all(|s| {
                let name = format!("{b}{s}");
                self.lookup(parent, &name).is_none() && !reserved(&name)
            })
        };
        if free(base) {
            return base.to_string();
        }
        let longest_suffix = suffixes.iter().map(|s| s.len()).max().unwrap_or(0);
        (2u64..)
            .map(|n| {
                let tag = format!("~{n}");
                let limit = 255 - longest_suffix - tag.len();
                let stem = if base.len() > limit { shorten(base, limit) } else { base.to_string() };
                format!("{stem}{tag}")
            })
            .find(|candidate| free(candidate))
            .expect("some suffix is free")
    }

    /// Returns the directory for raw path `dir`, creating what is missing.
    fn make_dirs(&mut self, dirs: &mut Dirs, dir: &[String]) -> Ino {
        if let Some(&ino) = dirs.known.get(dir) {
            return ino;
        }
        let (name, above) = dir.split_last().expect("the root is known");
        let parent = self.make_dirs(dirs, above);
        let safe = self.unique_name(parent, &sanitize(name), &[""], &|n| dirs.reserved(above, n));
        let ino = self.insert(parent, safe, Node::Dir { entries: Vec::new(), index: None, subdirs: 0 });
        dirs.known.insert(dir.to_vec(), ino);
        ino
    }

    /// Safe path components from the root to `ino`.
    fn path_of(&self, mut ino: Ino) -> Vec<String> {
        let mut parts = Vec::new();
        while ino != ROOT {
            parts.push(self.names[(ino - 1) as usize].clone());
            ino = self.parents[(ino - 1) as usize];
        }
        parts.reverse();
        parts
    }

    /// Each tensor's path in the tree (its files' path without the suffix), by tensor id.
    pub fn tensor_paths(&self) -> Vec<String> {
        let mut paths = vec![String::new(); self.tensors.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            if let Node::File { content: Content::Tensor(id, TensorFile::Raw), .. } = node {
                let path = self.path_of(i as Ino + 1).join("/");
                paths[*id] = path.strip_suffix(".raw").unwrap_or(&path).to_string();
            }
        }
        paths
    }

    pub fn node(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino).ok()?.checked_sub(1)?)
    }

    /// The safe name of `ino` in its directory ("" for the root).
    pub fn name(&self, ino: Ino) -> &str {
        usize::try_from(ino).ok().and_then(|i| self.names.get(i.checked_sub(1)?)).map_or("", String::as_str)
    }

    pub fn parent(&self, ino: Ino) -> Option<Ino> {
        self.parents.get(usize::try_from(ino).ok()?.checked_sub(1)?).copied()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> Option<Ino> {
        match self.node(parent)? {
            Node::Dir { index: Some(map), .. } => map.get(name).copied(),
            Node::Dir { entries, .. } => entries.iter().copied().find(|&i| self.names[(i - 1) as usize] == name),
            _ => None,
        }
    }

    /// Resolves a `/`-separated path of safe names from the root (not following links).
    pub fn resolve(&self, path: &str) -> Option<Ino> {
        path.split('/').filter(|c| !c.is_empty()).try_fold(ROOT, |ino, name| self.lookup(ino, name))
    }
}

/// A relative symlink target from directory `from` to `to` (both safe paths from the root).
fn relative(from: &[String], to: &[String]) -> String {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    let ups = std::iter::repeat_n("..".to_string(), from.len() - common);
    let parts: Vec<String> = ups.chain(to[common..].iter().cloned()).collect();
    if parts.is_empty() { ".".into() } else { parts.join("/") }
}

/// `info.json`'s `skipped` list, where a model or part left tensors out.
fn add_skipped(info: &mut Map<String, Value>, skipped: &[crate::model::SkippedTensor]) {
    if !skipped.is_empty() {
        info.insert("skipped".into(), Value::Array(skipped.iter().map(|s| s.to_json()).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::model::{InMemory, ModelLink};

    fn tensor(path: &[&str], data: Vec<u8>, dtype: DType, shape: Vec<u64>) -> Tensor {
        Tensor::new(path.iter().map(|s| s.to_string()).collect(), dtype, shape, Arc::new(InMemory(data.into())))
    }

    fn names(tree: &Tree, ino: Ino) -> Vec<String> {
        match tree.node(ino).unwrap() {
            Node::Dir { entries, .. } => entries.iter().map(|&i| tree.name(i).to_string()).collect(),
            _ => panic!("not a dir"),
        }
    }

    #[test]
    fn tensors_get_four_files_with_exact_sizes() {
        let mut model = Model { format: "test".into(), ..Default::default() };
        model.tensors.push(tensor(&["layers", "d", "kernel"], vec![0; 24], DType::F32, vec![2, 3]));
        model.tensors.push(tensor(&["layers", "d", "b16"], vec![0; 4], DType::BF16, vec![2]));
        let tree = Tree::build(model, "src");
        let d = tree.resolve("layers/d").unwrap();
        assert_eq!(names(&tree, d).len(), 8);
        let size = |p: &str| match tree.node(tree.resolve(p).unwrap()).unwrap() {
            Node::File { size, .. } => *size,
            _ => panic!(),
        };
        assert_eq!(size("layers/d/kernel.npy"), 128 + 24);
        assert_eq!(size("layers/d/kernel.raw"), 24);
        assert_eq!(size("layers/d/kernel.shape"), 4);
        assert_eq!(size("layers/d/b16.npy"), 128 + 8);
        assert_eq!(size("layers/d/b16.raw"), 4);
    }

    #[test]
    fn hostile_and_duplicate_names_stay_inside() {
        let mut model = Model::default();
        model.tensors.push(tensor(&["..", "x"], vec![1], DType::U8, vec![1]));
        model.tensors.push(tensor(&["a", "w"], vec![1], DType::U8, vec![1]));
        model.tensors.push(tensor(&["a", "w"], vec![2], DType::U8, vec![1]));
        model.tensors.push(tensor(&["a", "w.npy"], vec![3], DType::U8, vec![]));
        let tree = Tree::build(model, "src");
        assert!(tree.resolve("%2E%2E/x.npy").is_some());
        let a = tree.resolve("a").unwrap();
        let n = names(&tree, a);
        assert!(n.contains(&"w.npy".to_string()) && n.contains(&"w~2.npy".to_string()));
        assert!(n.contains(&"w.npy.npy".to_string()));
        let unique: std::collections::HashSet<_> = n.iter().collect();
        assert_eq!(unique.len(), n.len());
    }

    #[test]
    fn links_are_relative_to_safe_names() {
        let mut model = Model::default();
        model.tensors.push(tensor(&["layers", "a/b", "k"], vec![1], DType::U8, vec![1]));
        model.dirs.push(vec!["layers".into(), "..".into()]);
        model.links.push(ModelLink { path: vec!["layers".into(), "0".into()], target: vec!["layers".into(), "..".into()] });
        let tree = Tree::build(model, "src");
        let link = tree.resolve("layers/0").unwrap();
        match tree.node(link).unwrap() {
            Node::Symlink(t) => assert_eq!(t, "%2E%2E"),
            _ => panic!(),
        }
        assert_eq!(relative(&["a".into(), "b".into()], &["a".into(), "c".into()]), "../c");
    }

    #[test]
    fn index_links_take_decimal_names_from_layers() {
        let mut model = Model::default();
        for (i, name) in ["inp", "..", "1", "3", "plain"].iter().enumerate() {
            let dir = vec!["layers".to_string(), name.to_string()];
            model.tensors.push(tensor(&["layers", name, "k"], vec![i as u8], DType::U8, vec![1]));
            model.links.push(ModelLink { path: vec!["layers".into(), i.to_string()], target: dir });
        }
        let tree = Tree::build(model, "src");
        let link = |i: usize| match tree.node(tree.resolve(&format!("layers/{i}")).unwrap()).unwrap() {
            Node::Symlink(t) => t.clone(),
            _ => panic!("layers/{i} is not a link"),
        };
        assert_eq!((0..5).map(link).collect::<Vec<_>>(), ["inp", "%2E%2E", "1~2", "3~2", "plain"]);
        assert!(tree.resolve("layers/1~2/k.npy").is_some() && tree.resolve("layers/3~2/k.npy").is_some());

        // Without index links (the order unknown), a decimal name still never means a layer;
        // elsewhere it is an ordinary name.
        let mut model = Model::default();
        for dir in ["layers", "datasets"] {
            model.tensors.push(tensor(&[dir, "7", "k"], vec![1], DType::U8, vec![1]));
        }
        let tree = Tree::build(model, "src");
        assert!(tree.resolve("layers/7").is_none() && tree.resolve("layers/7~2/k.npy").is_some());
        assert!(tree.resolve("datasets/7/k.npy").is_some());
    }

    #[test]
    fn parts_get_their_own_info_and_tensor_table() {
        let mut model = Model::default();
        model.tensors.push(tensor(&["a", "v", "x"], vec![0; 4], DType::F32, vec![]));
        model.tensors.push(tensor(&["b", "v", "y"], vec![0; 8], DType::F64, vec![]));
        for part in ["a", "b"] {
            let mut info = Map::new();
            info.insert("format".into(), json!("part"));
            model.parts.push(crate::model::Part { path: vec![part.into()], info, skipped: Vec::new() });
        }
        let tree = Tree::build(model, "src");
        let text = |p: &str| match tree.node(tree.resolve(p).unwrap()).unwrap() {
            Node::File { content: Content::Bytes(b), size, .. } => {
                let mut buf = vec![0; *size as usize];
                b.read_at(0, &mut buf).unwrap();
                String::from_utf8(buf).unwrap()
            }
            _ => panic!(),
        };
        assert_eq!(text("b/tensors.tsv"), "path\tdtype\tshape\tbytes\tname\nv/y.npy\tfloat64\t\t8\tv/y\n");
        assert!(text("tensors.tsv").contains("a/v/x.npy") && text("tensors.tsv").contains("b/v/y.npy"));
        let info: Value = serde_json::from_str(&text("a/info.json")).unwrap();
        assert_eq!((info["format"].as_str(), info["tensors"].as_u64(), info["bytes"].as_u64()), (Some("part"), Some(1), Some(4)));
        let root: Value = serde_json::from_str(&text("info.json")).unwrap();
        assert_eq!(root["tensors"].as_u64(), Some(2));
    }

    #[test]
    fn large_directories_find_every_entry_before_and_after_their_index_exists() {
        let mut model = Model::default();
        for i in 0..40 {
            model.tensors.push(tensor(&["d", &format!("w{i}")], vec![i as u8], DType::U8, vec![1]));
        }
        let tree = Tree::build(model, "src");
        let d = tree.resolve("d").unwrap();
        assert_eq!(names(&tree, d).len(), 160);
        for i in 0..40 {
            for suffix in TENSOR_SUFFIXES {
                let ino = tree.resolve(&format!("d/w{i}{suffix}")).unwrap();
                assert_eq!(tree.name(ino), format!("w{i}{suffix}"));
            }
        }
        assert!(tree.resolve("d/w40.npy").is_none());
    }

    #[test]
    fn tensors_tsv_lists_every_tensor() {
        let mut model = Model::default();
        model.tensors.push(tensor(&["v", "s"], vec![0; 8], DType::I64, vec![]));
        let tree = Tree::build(model, "src");
        let Node::File { content: Content::Bytes(b), size, .. } = tree.node(tree.resolve("tensors.tsv").unwrap()).unwrap() else {
            panic!()
        };
        let mut buf = vec![0; *size as usize];
        b.read_at(0, &mut buf).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), "path\tdtype\tshape\tbytes\tname\nv/s.npy\tint64\t\t8\tv/s\n");
    }

    /// Regression (found by the property tests): a part at the root, or two parts at one
    /// place, gave a directory two `info.json` and two `tensors.tsv` entries.
    #[test]
    fn parts_sharing_a_directory_get_one_info_json() {
        let mut model = Model::default();
        for path in [vec![], vec!["a".to_string()], vec!["a".to_string()]] {
            model.parts.push(crate::model::Part { path, info: Map::new(), skipped: Vec::new() });
        }
        model.tensors.push(tensor(&["a", "x"], vec![0; 4], DType::F32, vec![1]));
        let tree = Tree::build(model, "src");
        crate::fuzzing::check_tree(&tree).unwrap();
        assert!(tree.resolve("a/info.json").is_some() && tree.resolve("a/x.npy").is_some());
    }
}
