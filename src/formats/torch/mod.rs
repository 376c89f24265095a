//! PyTorch `torch.save` files (docs/formats/pytorch.md): the zip format and the legacy format, read
//! without PyTorch and without running the pickle (`crate::pickle` interprets it as data).
//!
//! Tensors are found anywhere in the pickled object (state dicts, nested checkpoints, pickled
//! modules, numpy arrays) and named by their path from the root (docs/tree.md 7.1); everything else
//! goes to `object.json`. Storages are served in place: zip members by `pread`, legacy storages
//! at the offsets found by walking the file once at mount.

// Formats whose weights are torch.save pickles or zips, read by this module's walk.
pub(crate) mod dcp;
pub(crate) mod paddle;

use base64::{Engine, engine::general_purpose::STANDARD};
use crate::formats::options::ReadOptions;
use crate::formats::archive::Archive;
use crate::cache::ChunkCache;
use crate::dtype::DType;
use crate::error::{OpenError, ReadError};
use crate::model::{ByteSwapped, Extent, Model, ModelFile, SkippedTensor, Tensor, TensorBytes, TensorId, json_text, split_name};
use crate::pickle::{self, Id, Limits, Node, Object, Pickle, Value};
use crate::source::Blob;
use serde_json::{Map, Value as Json, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The first pickle of a legacy file: protocol 2, then the magic number as a LONG1.
pub const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";
const LEGACY_PROTOCOL_VERSION: i128 = 1001;
/// Most bytes the walk may spend describing the pickle (names, strings, one word per reference
/// followed): the objects are walked once each, but each costs its name and its text.
const MAX_WALK_BYTES: u64 = 256 << 20;
/// Longest dict key used as a name component; a key of tuples is cut there with `...`.
const MAX_KEY_TEXT: usize = 4096;
/// Bytes charged for following one reference, besides its name.
const REFERENCE_COST: u64 = 16;
/// Deepest nesting followed; deeper values appear in `object.json` as truncated.
const MAX_DEPTH: usize = 200;
/// Most bytes of `object.json` files below the root (each level repeats its subtree).
const MAX_LEVEL_JSON: u64 = 64 << 20;
/// Most wrappers (Parameter, subclass, device) around one tensor's rebuild call.
const MAX_REBUILD_NESTING: usize = 8;
/// Most dimensions of a tensor (numpy's own limit).
const MAX_RANK: usize = 64;
/// Storage bytes read at a time to gather a strided view (a multiple of every element size).
const GATHER_BLOCK: u64 = 256 << 10;

/// `P` when `P/data.pkl` is a member and `P` is the first member's directory: torch's own rule.
pub fn record_prefix(archive: &mut Archive) -> Option<String> {
    let (_, first) = archive.file_names().into_iter().next()?;
    let prefix = first.split('/').next()?.to_string();
    archive.index_for_name(&format!("{prefix}/data.pkl")).map(|_| prefix)
}

/// A TorchScript archive (`torch.jit.save`): a torch zip with a `constants.pkl` record.
pub fn is_torchscript(archive: &mut Archive) -> bool {
    record_prefix(archive).is_some_and(|prefix| archive.index_for_name(&format!("{prefix}/constants.pkl")).is_some())
}

/// A zip-format file, its records under its [`record_prefix`]. A TorchScript archive
/// (`torch.jit.save`: a `constants.pkl` record) adds its constants and its `code/` source.
pub fn read_zip(mut archive: Archive, options: &ReadOptions) -> Result<Model, OpenError> {
    let prefix = &record_prefix(&mut archive).ok_or_else(|| OpenError::UnknownFormat("zip archive holds no data.pkl record".into()))?;
    let mut info = Map::new();
    info.insert("torch_format".into(), json!("zip"));
    info.insert("record_prefix".into(), json!(prefix));
    let constants = archive.index_for_name(&format!("{prefix}/constants.pkl"));
    let mut big_endian = false;
    if let Some(i) = archive.index_for_name(&format!("{prefix}/byteorder")) {
        let order = archive.read_member(i, 16)?;
        let order = String::from_utf8_lossy(&order).trim().to_string();
        big_endian = match order.as_str() {
            "little" => false,
            "big" => true,
            other => return Err(OpenError::corrupt(format!("byteorder record says {other:?}, neither little nor big"))),
        };
        info.insert("byteorder".into(), json!(order));
    }
    let storages = members_under(&mut archive, &format!("{prefix}/data/"))?;
    let pkl = archive.index_for_name(&format!("{prefix}/data.pkl")).ok_or_else(|| OpenError::corrupt("data.pkl is missing"))?;
    let pkl = archive.member(pkl)?;
    let Some(constants) = constants else {
        return read_data_pkl(&pkl, &storages, big_endian, info, options);
    };
    // TorchScript: the root is the scripted module itself, so names are state_dict()'s
    // throughout (its modules pickle their attributes directly, without `_parameters`).
    let data = load_record(&pkl, "data.pkl", &mut info)?;
    let constants_pkl = load_record(&archive.member(constants)?, "constants.pkl", &mut info)?;
    let constant_storages = members_under(&mut archive, &format!("{prefix}/constants/"))?;
    let mut walk = Walk::new(&data, &storages, big_endian, options);
    let root = walk.value(&data.root, "", true, 0)?;
    let mut model = walk.into_model(info, &data, &root);
    // The constants are a tuple the code names `CONSTANTS.c0`, `CONSTANTS.c1`, ...
    let mut walk = Walk::new(&constants_pkl, &constant_storages, big_endian, options);
    let items = constants_pkl.sequence(&constants_pkl.root).ok_or_else(|| OpenError::corrupt("constants.pkl is not a tuple"))?;
    let mut listed = Map::new();
    for (i, item) in items.iter().enumerate() {
        listed.insert(format!("c{i}"), walk.value(item, &format!("{CONSTANTS}.c{i}"), true, 1)?);
    }
    model.tensors.append(&mut walk.tensors);
    model.skipped.append(&mut walk.skipped);
    if !items.is_empty() {
        model.add_json(vec!["tensors".into(), CONSTANTS.into(), "object.json".into()], &Json::Object(listed));
    }
    // The TorchScript source (text), for grep; its `.debug_pkl` source maps are left out.
    let code_dir = format!("{prefix}/code/");
    let mut code = 0;
    for (i, name) in archive.file_names() {
        if let Some(path) = name.strip_prefix(&code_dir).filter(|p| !p.ends_with(".debug_pkl") && !p.ends_with('/')) {
            let blob = archive.member(i)?;
            let len = blob.len();
            let mut components = vec!["code".to_string()];
            components.extend(path.split('/').map(str::to_string));
            model.files.push(ModelFile { path: components, bytes: Arc::new(Extent { blob, offset: 0, len }) });
            code += 1;
        }
    }
    model.info.insert("code_files".into(), json!(code));
    Ok(model)
}

/// Where a TorchScript archive's constants appear under `tensors/`: as its code names them.
const CONSTANTS: &str = "CONSTANTS";

/// The members under `dir` (storages), by their name below it.
fn members_under(archive: &mut Archive, dir: &str) -> Result<HashMap<String, Blob>, OpenError> {
    let mut members = HashMap::new();
    for (i, name) in archive.file_names() {
        if let Some(key) = name.strip_prefix(dir) {
            members.insert(key.to_string(), archive.member(i)?);
        }
    }
    Ok(members)
}

/// The pickle in `pkl`, its globals recorded in `info` (docs/tree.md 7.1) under `record`'s name.
fn load_record(pkl: &Blob, record: &str, info: &mut Map<String, Json>) -> Result<Pickle, OpenError> {
    let (pickle, _) = pickle::load(pkl, 0, Limits::default()).map_err(|e| OpenError::corrupt(format!("{record}: {e}")))?;
    pickle::record_globals(info, record, &pickle);
    Ok(pickle)
}

/// The zip format's `data.pkl` over its storages (by key).
pub fn read_data_pkl(
    pkl: &Blob,
    storages: &HashMap<String, Blob>,
    big_endian: bool,
    mut info: Map<String, Json>,
    options: &ReadOptions,
) -> Result<Model, OpenError> {
    let pickle = load_record(pkl, "data.pkl", &mut info)?;
    extract(&pickle, storages, big_endian, info, options)
}

/// A whole file that is one pickle, without storages (numpy arrays are its tensors).
pub fn read_pickle(blob: &Blob, options: &ReadOptions) -> Result<Model, OpenError> {
    let mut info = Map::new();
    let pickle = load_record(blob, "pickle", &mut info)?;
    extract(&pickle, &HashMap::new(), false, info, options)
}

/// A legacy file (docs/formats/pytorch.md#legacy-format): magic, protocol and sys_info pickles, the object pickle,
/// the storage key list, then each storage as an i64 element count and its bytes.
pub fn read_legacy(blob: &Blob, options: &ReadOptions) -> Result<Model, OpenError> {
    let small = Limits { objects: 1 << 10, bytes: 1 << 16, ..Limits::default() };
    let load = |at: u64, limits: Limits, what: &str| {
        pickle::load(blob, at, limits).map_err(|e| OpenError::corrupt(format!("legacy torch file, {what}: {e}")))
    };
    let (magic, at) = load(0, small, "magic number")?;
    if !matches!(magic.root, Value::Int(0x1950_A86A_20F9_469C_FC6C)) {
        return Err(OpenError::UnknownFormat("not a legacy torch file (wrong magic number)".into()));
    }
    let (protocol, at) = load(at, small, "protocol version")?;
    if protocol.int(&protocol.root) != Some(LEGACY_PROTOCOL_VERSION) {
        return Err(OpenError::corrupt("legacy torch file with an unknown protocol version"));
    }
    let (sys_info, at) = load(at, small, "sys_info")?;
    let sys_json = plain_json(&sys_info, &sys_info.root, 0, &mut 4096);
    let big_endian = sys_json.get("little_endian") == Some(&Json::Bool(false));
    let (object, at) = load(at, Limits::default(), "object")?;
    let (keys_pickle, mut at) = load(at, Limits::default(), "storage keys")?;
    let keys: Vec<String> = keys_pickle
        .sequence(&keys_pickle.root)
        .ok_or_else(|| OpenError::corrupt("legacy torch file: the storage key list is not a list"))?
        .iter()
        .map(|k| keys_pickle.text(k).map(|t| t.into_owned()))
        .collect::<Option<_>>()
        .ok_or_else(|| OpenError::corrupt("legacy torch file: a storage key is not a string"))?;
    // Each storage's element size comes from the storage class its references name.
    let mut element_size = HashMap::new();
    for node in &object.nodes {
        if let Node::Persistent(pid) = node
            && let Ok(s) = storage_of(&object, pid)
            && let Some(dtype) = s.dtype
        {
            element_size.insert(s.key, dtype.size() as u64);
        }
    }
    let mut storages = HashMap::new();
    for key in keys {
        // A key no reference names has no known size, so nothing after it can be located.
        let Some(&size) = element_size.get(&key) else { break };
        let count = blob.read_vec(at, 8).map_err(|_| OpenError::corrupt(format!("storage {key} lies past the end of the file")))?;
        let count: [u8; 8] = count.try_into().unwrap_or_default();
        let count = if big_endian { u64::from_be_bytes(count) } else { u64::from_le_bytes(count) };
        let bytes = count.checked_mul(size).ok_or_else(|| OpenError::corrupt(format!("storage {key}: absurd element count {count}")))?;
        let start = at + 8;
        let data = blob
            .slice(start, bytes)
            .map_err(|_| OpenError::corrupt(format!("storage {key} ({bytes} bytes at {start}) lies past the end of the file")))?;
        storages.insert(key, data);
        at = start + bytes;
    }
    let mut info = Map::new();
    info.insert("torch_format".into(), json!("legacy"));
    info.insert("sys_info".into(), sys_json);
    // Every pickle, the integer ones too: a global in any of them would be imported by torch.load.
    for (part, p) in [("magic_number", &magic), ("protocol_version", &protocol), ("sys_info", &sys_info), ("object", &object), ("storage_keys", &keys_pickle)] {
        pickle::record_globals(&mut info, part, p);
    }
    extract(&object, &storages, big_endian, info, options)
}

/// The tensors and `object.json` files of an interpreted pickle.
fn extract(
    pickle: &Pickle,
    storages: &HashMap<String, Blob>,
    big_endian: bool,
    info: Map<String, Json>,
    options: &ReadOptions,
) -> Result<Model, OpenError> {
    let mut walk = Walk::new(pickle, storages, big_endian, options);
    let root = walk.value(&pickle.root, "", false, 0)?;
    Ok(walk.into_model(info, pickle, &root))
}

/// What the pickled root is, for `info.json`: its class, or the container type.
fn top_level(pickle: &Pickle) -> String {
    match pickle.node(&pickle.root) {
        Some(Node::Object(o)) => match class_of(pickle, o) {
            Some(c) if c == "collections.OrderedDict" => "OrderedDict".into(),
            Some(c) => c,
            None => "object".into(),
        },
        Some(Node::Dict(_)) => "dict".into(),
        Some(Node::List(_)) => "list".into(),
        Some(Node::Tuple(_)) => "tuple".into(),
        Some(_) => "other".into(),
        None => "scalar".into(),
    }
}

/// The walk over the pickled object that names tensors and builds the JSON of the rest.
struct Walk<'a> {
    pickle: &'a Pickle,
    storages: &'a HashMap<String, Blob>,
    big_endian: bool,
    cache: Arc<ChunkCache>,
    tensors: Vec<Tensor>,
    skipped: Vec<SkippedTensor>,
    /// (name, object.json text) of each level below the root that holds tensors.
    levels: Vec<(String, Vec<u8>)>,
    level_bytes: u64,
    /// What each object walked so far was: a node is walked once, whatever refers to it again.
    first_visits: HashMap<Id, Visited>,
    /// Bytes spent on names and text, against `MAX_WALK_BYTES`.
    spent: u64,
}

/// An object the walk has met before.
enum Visited {
    /// Written into `object.json` under this name; later references say `{"__shared__": name}`.
    Object(String),
    /// A tensor: every reference to it names it again (tied weights have each of their names).
    Tensor(Found),
}

/// `name` extended by `key`: `/` between dict keys, list indices and attributes, `.` inside an
/// `nn.Module` (as `state_dict()` names things).
fn child(name: &str, key: &str, in_module: bool) -> String {
    match (name.is_empty(), in_module) {
        (true, _) => key.to_string(),
        (false, true) => format!("{name}.{key}"),
        (false, false) => format!("{name}/{key}"),
    }
}

impl<'a> Walk<'a> {
    fn new(pickle: &'a Pickle, storages: &'a HashMap<String, Blob>, big_endian: bool, options: &ReadOptions) -> Self {
        Walk {
            pickle,
            storages,
            big_endian,
            cache: options.cache.clone(),
            tensors: Vec::new(),
            skipped: Vec::new(),
            levels: Vec::new(),
            level_bytes: 0,
            first_visits: HashMap::new(),
            spent: 0,
        }
    }

    /// The model of a walk from `pickle`'s root (`root` its JSON): tensors, `object.json` files.
    fn into_model(self, mut info: Map<String, Json>, pickle: &Pickle, root: &Json) -> Model {
        info.insert("top_level".into(), json!(top_level(pickle)));
        let mut model = Model { info, tensors: self.tensors, skipped: self.skipped, ..Model::default() };
        model.add_json(vec!["object.json".into()], root);
        for (name, text) in self.levels {
            let mut path = split_name("tensors", &name);
            path.push("object.json".into());
            model.add_file(path, text);
        }
        model
    }

    fn value(&mut self, v: &Value, name: &str, in_module: bool, depth: usize) -> Result<Json, OpenError> {
        self.spend(REFERENCE_COST + name.len() as u64)?;
        let Value::Ref(id) = v else { return self.scalar(v) };
        match self.first_visits.get(id) {
            Some(Visited::Tensor(found)) => return Ok(self.tensor(found.clone(), name)),
            Some(Visited::Object(first)) => return Ok(json!({"__shared__": first})),
            None => {}
        }
        if depth >= MAX_DEPTH {
            return Ok(json!({"__truncated__": format!("nested deeper than {MAX_DEPTH} levels")}));
        }
        if let Some(found) = self.tensor_of(v) {
            self.first_visits.insert(*id, Visited::Tensor(found.clone()));
            return Ok(self.tensor(found, name));
        }
        self.first_visits.insert(*id, Visited::Object(name.to_string()));
        let tensors_before = self.tensors.len();
        let result = self.node(v, name, in_module, depth)?;
        if !name.is_empty() && self.tensors.len() > tensors_before && self.level_bytes < MAX_LEVEL_JSON {
            let text = json_text(&result);
            self.level_bytes += text.len() as u64;
            self.levels.push((name.to_string(), text));
        }
        Ok(result)
    }

    fn spend(&mut self, bytes: u64) -> Result<(), OpenError> {
        self.spent += bytes;
        if self.spent > MAX_WALK_BYTES {
            return Err(OpenError::corrupt(format!("data.pkl takes more than {} MiB of names and text to describe", MAX_WALK_BYTES >> 20)));
        }
        Ok(())
    }

    fn scalar(&mut self, v: &Value) -> Result<Json, OpenError> {
        if let Value::Str(s) = v {
            self.spend(s.len() as u64)?;
        } else if let Value::Bytes(b) = v {
            self.spend(b.len() as u64 * 4 / 3)?;
        }
        Ok(scalar_json(v))
    }

    /// The tensor `v` is, if it is one: a storage, a torch rebuild call or a numpy array.
    fn tensor_of(&self, v: &Value) -> Option<Found> {
        let pickle = self.pickle;
        match pickle.node(v)? {
            Node::Persistent(pid) if module_class(pickle, pid).is_none() => Some(storage_of(pickle, pid).and_then(|s| {
                let dtype = s.dtype.unwrap_or(DType::U8);
                let count = s.bytes.map_or(s.numel, |b| b / dtype.size() as u64);
                let layout = Layout { dtype, offset: 0, shape: vec![count], stride: vec![1] };
                self.storage_bytes(&s, &layout).map(|bytes| (layout, bytes))
            })),
            Node::Object(o) => self.rebuild(&o.class, &o.args, o.state.as_ref(), 0),
            _ => None,
        }
    }

    fn node(&mut self, v: &Value, name: &str, in_module: bool, depth: usize) -> Result<Json, OpenError> {
        let pickle = self.pickle;
        let Some(node) = pickle.node(v) else { return Ok(Json::Null) };
        Ok(match node {
            Node::List(items) | Node::Tuple(items) | Node::Set(items) => self.sequence(items, name, in_module, depth)?,
            Node::Dict(items) => self.mapping(items, name, in_module, depth)?,
            Node::Global { .. } => {
                let (module, name) = pickle.global(v).unwrap_or_default();
                json!({"__global__": format!("{module}.{name}")})
            }
            // Storages are tensors (`tensor_of`); a legacy module class is what is left.
            Node::Persistent(pid) => json!({"__global__": module_class(pickle, pid)}),
            Node::Object(o) => match pickle.bytes(v) {
                Some(bytes) => {
                    self.spend(bytes.len() as u64 * 4 / 3)?;
                    bytes_json(&bytes)
                }
                None => self.object(o, name, in_module, depth)?,
            },
        })
    }

    fn sequence(&mut self, items: &[Value], name: &str, in_module: bool, depth: usize) -> Result<Json, OpenError> {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(self.value(item, &child(name, &i.to_string(), in_module), in_module, depth + 1)?);
        }
        Ok(Json::Array(out))
    }

    fn mapping(&mut self, items: &[(Value, Value)], name: &str, in_module: bool, depth: usize) -> Result<Json, OpenError> {
        let mut out = Map::new();
        for (k, v) in items {
            let key = key_text(self.pickle, k);
            let value = self.value(v, &child(name, &key, in_module), in_module, depth + 1)?;
            out.insert(key, value);
        }
        Ok(Json::Object(out))
    }

    fn object(&mut self, o: &Object, name: &str, in_module: bool, depth: usize) -> Result<Json, OpenError> {
        let pickle = self.pickle;
        let class = class_of(pickle, o);
        match class.as_deref() {
            Some("collections.OrderedDict" | "collections.defaultdict" | "collections.Counter" | "builtins.dict") => {
                let mut out = self.mapping(&o.items, name, in_module, depth)?;
                if let (Some(state), Json::Object(map)) = (&o.state, &mut out) {
                    map.insert("__state__".into(), self.value(state, name, in_module, depth + 1)?);
                }
                return Ok(out);
            }
            Some("builtins.set" | "builtins.frozenset" | "torch.Size" | "builtins.list" | "builtins.tuple") => {
                return match o.args.first().and_then(|a| pickle.sequence(a)) {
                    Some(items) => self.sequence(items, name, in_module, depth),
                    None => Ok(Json::Array(Vec::new())),
                };
            }
            Some(c) if c.ends_with("multiarray.scalar") => {
                if let Some(number) = numpy_scalar(pickle, &o.args) {
                    return Ok(number);
                }
            }
            _ => {}
        }
        let mut out = Map::new();
        out.insert("__class__".into(), match class {
            Some(c) => json!(c),
            None => self.value(&o.class, name, in_module, depth + 1)?,
        });
        if !o.args.is_empty() {
            out.insert("__args__".into(), self.sequence(&o.args, name, in_module, depth)?);
        }
        let attributes = o.state.as_ref().and_then(|s| attribute_dicts(pickle, s));
        let module = attributes.as_ref().is_some_and(|dicts| {
            let has = |key: &str| dicts.iter().flat_map(|d| d.iter()).any(|(k, _)| pickle.text(k).as_deref() == Some(key));
            has("_parameters") && has("_modules")
        });
        match (attributes, &o.state) {
            (Some(dicts), _) => {
                for (k, v) in dicts.into_iter().flatten() {
                    let key = key_text(pickle, k);
                    let value = if module && matches!(key.as_str(), "_parameters" | "_buffers" | "_modules") {
                        // The module's own containers add no level to state_dict() names.
                        self.module_members(v, name, in_module, depth + 1)?
                    } else {
                        self.value(v, &child(name, &key, in_module), module || in_module, depth + 1)?
                    };
                    out.insert(key, value);
                }
            }
            (None, Some(state)) => {
                out.insert("__state__".into(), self.value(state, name, in_module, depth + 1)?);
            }
            (None, None) => {}
        }
        if !o.items.is_empty() {
            out.insert("__items__".into(), self.mapping(&o.items, name, in_module, depth + 1)?);
        }
        if !o.elements.is_empty() {
            out.insert("__elements__".into(), self.sequence(&o.elements, name, in_module, depth + 1)?);
        }
        Ok(Json::Object(out))
    }

    /// The entries of a module's `_parameters`, `_buffers` or `_modules`, named as direct
    /// children of the module.
    fn module_members(&mut self, v: &Value, name: &str, in_module: bool, depth: usize) -> Result<Json, OpenError> {
        let pickle = self.pickle;
        let items = match pickle.node(v) {
            Some(Node::Dict(items)) => items,
            Some(Node::Object(o)) if o.args.is_empty() => &o.items,
            _ => return self.value(v, name, in_module, depth),
        };
        let mut out = Map::new();
        for (k, v) in items {
            let key = key_text(pickle, k);
            out.insert(key.clone(), self.value(v, &child(name, &key, in_module), true, depth + 1)?);
        }
        Ok(Json::Object(out))
    }

    /// Adds a found tensor under `name` (or records why it could not be read); its JSON.
    fn tensor(&mut self, found: Found, name: &str) -> Json {
        let name = if name.is_empty() { "tensor" } else { name };
        match found {
            Ok((layout, bytes)) => {
                let (dtype, shape) = layout.exposed();
                let entry = json!({"__tensor__": name, "dtype": dtype.name(), "shape": shape});
                self.tensors.push(Tensor::named(name, dtype, shape, bytes));
                entry
            }
            Err(reason) => {
                self.skipped.push(SkippedTensor::new(TensorId::Name(name.to_string()), reason.clone()));
                json!({"__tensor__": name, "skipped": reason})
            }
        }
    }

    /// A tensor when `func(*args)` (then BUILD `state`) is one of torch's rebuild functions or
    /// a numpy array reconstruction; `None` for anything else.
    fn rebuild(&self, func: &Value, args: &[Value], state: Option<&Value>, depth: usize) -> Option<Found> {
        let pickle = self.pickle;
        if depth > MAX_REBUILD_NESTING {
            return Some(Err(format!("tensor rebuilt through more than {MAX_REBUILD_NESTING} wrappers")));
        }
        let (module, name) = pickle.global(func)?;
        match (module, name) {
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state" | "_rebuild_device_tensor_from_cpu_tensor") => {
                let inner = pickle.object(args.first()?)?;
                self.rebuild(&inner.class, &inner.args, inner.state.as_ref(), depth + 1)
            }
            ("torch._tensor", "_rebuild_from_type_v2") => {
                let inner_args = pickle.sequence(args.get(2)?)?;
                self.rebuild(args.first()?, inner_args, None, depth + 1)
            }
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_qtensor") => Some(self.storage_tensor(args, None)),
            ("torch._utils", "_rebuild_tensor_v3") => {
                let dtype = args.get(6).and_then(|d| pickle.global(d)).map(|(_, n)| n);
                Some(match dtype.map(torch_dtype) {
                    Some(Ok(dtype)) => self.storage_tensor(args, Some(dtype)),
                    Some(Err(e)) => Err(e),
                    None => Err("_rebuild_tensor_v3 without a dtype".into()),
                })
            }
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
                let state = pickle.sequence(state?)?;
                Some(self.numpy_array(state))
            }
            _ => None,
        }
    }

    /// `(storage, storage_offset, size, stride, ...)` of torch's rebuild functions.
    fn storage_tensor(&self, args: &[Value], dtype: Option<DType>) -> Found {
        let pickle = self.pickle;
        let storage = match args.first().and_then(|s| pickle.node(s)) {
            Some(Node::Persistent(pid)) => storage_of(pickle, pid)?,
            _ => return Err("the tensor's storage is not a storage reference".into()),
        };
        let dtype = dtype.or(storage.dtype).ok_or("the tensor's storage has no dtype")?;
        let offset = args.get(1).and_then(|v| pickle.int(v)).ok_or("the tensor has no storage offset")?;
        let shape = self.dims(args.get(2)).ok_or("the tensor's size is not a tuple of integers")?;
        let stride = self.dims(args.get(3)).ok_or("the tensor's stride is not a tuple of integers")?;
        let offset = u64::try_from(offset).map_err(|_| format!("negative storage offset {offset}"))?;
        if stride.len() != shape.len() {
            return Err(format!("size {shape:?} and stride {stride:?} differ in rank"));
        }
        let layout = Layout { dtype, offset, shape, stride };
        let bytes = self.storage_bytes(&storage, &layout)?;
        Ok((layout, bytes))
    }

    /// Non-negative integers of a tuple, list or `torch.Size`.
    fn dims(&self, v: Option<&Value>) -> Option<Vec<u64>> {
        let pickle = self.pickle;
        let v = v?;
        let items = match pickle.sequence(v) {
            Some(items) => items,
            None => pickle.sequence(pickle.object(v)?.args.first()?)?,
        };
        items.iter().map(|d| pickle.int(d).and_then(|d| u64::try_from(d).ok())).collect()
    }

    /// The bytes of a tensor viewing a storage, checked against the storage's length.
    fn storage_bytes(&self, storage: &StorageRef, layout: &Layout) -> Result<Arc<dyn TensorBytes>, String> {
        let blob = self.storages.get(&storage.key).ok_or_else(|| format!("storage {} is missing from the file", storage.key))?;
        let es = layout.dtype.size() as u64;
        let (base, available) = match storage.view {
            Some((offset, count)) => {
                let start = offset.checked_mul(es).ok_or("absurd storage view")?;
                let len = count.checked_mul(es).ok_or("absurd storage view")?;
                if start.checked_add(len).is_none_or(|end| end > blob.len()) {
                    return Err(format!("storage view of {} lies outside its storage", storage.key));
                }
                (start, len)
            }
            None => (0, blob.len()),
        };
        let blob = blob.slice(base, available).map_err(|e| e.to_string())?;
        view_bytes(blob, layout, self.big_endian, &self.cache)
    }

    fn numpy_array(&self, state: &[Value]) -> Found {
        let pickle = self.pickle;
        let [_, shape, dtype, fortran, data] = state else { return Err("numpy array state is not 5 items".into()) };
        let shape = self.dims(Some(shape)).ok_or("numpy array shape is not a tuple of integers")?;
        let (dtype, big_endian) = numpy_dtype(pickle, dtype)?;
        let data = pickle.bytes(data).ok_or("numpy array data are not bytes (an object array?)")?;
        let count = Tensor::element_count(&shape).ok_or("numpy array shape overflows")?;
        let es = dtype.size() as u64;
        if count.checked_mul(es) != Some(data.len() as u64) {
            return Err(format!("numpy array data hold {} bytes, not {count} x {es}", data.len()));
        }
        let fortran = matches!(fortran, Value::Bool(true));
        let mut stride = vec![0u64; shape.len()];
        let mut step = 1u64;
        let order: Vec<usize> = if fortran { (0..shape.len()).collect() } else { (0..shape.len()).rev().collect() };
        for i in order {
            stride[i] = step;
            step = step.saturating_mul(shape[i].max(1));
        }
        let layout = Layout { dtype, offset: 0, shape, stride };
        let blob = Blob::Memory(Arc::new(data.to_vec()));
        let bytes = view_bytes(blob, &layout, big_endian, &self.cache)?;
        Ok((layout, bytes))
    }
}

/// The attribute dicts of an object's BUILD state: a dict, or `(dict, slots dict)`.
fn attribute_dicts<'p>(pickle: &'p Pickle, state: &Value) -> Option<Vec<&'p [(Value, Value)]>> {
    let dict = |v: &Value| match pickle.node(v) {
        Some(Node::Dict(items)) => Some(&items[..]),
        _ => None,
    };
    if let Some(items) = dict(state) {
        return Some(vec![items]);
    }
    match pickle.node(state) {
        Some(Node::Tuple(parts)) if parts.len() == 2 => {
            let dicts: Vec<_> = parts.iter().filter_map(dict).collect();
            let nones = parts.iter().filter(|p| matches!(p, Value::None)).count();
            (dicts.len() + nones == 2 && !dicts.is_empty()).then_some(dicts)
        }
        _ => None,
    }
}

/// A tensor's layout and bytes, or why it cannot be read.
type Found = Result<(Layout, Arc<dyn TensorBytes>), String>;

/// A tensor's view of its storage, in elements of its dtype (docs/formats/pytorch.md#how-objects-appear-in-datapkl).
#[derive(Clone)]
struct Layout {
    dtype: DType,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

impl Layout {
    /// The dtype and shape the tree shows: torch's float4 counts bytes of two values each.
    fn exposed(&self) -> (DType, Vec<u64>) {
        let mut shape = self.shape.clone();
        if self.dtype == DType::F4E2M1FN {
            if let Some(last) = shape.last_mut() {
                *last = last.saturating_mul(2);
            } else {
                shape.push(2);
            }
        }
        (self.dtype, shape)
    }

    fn contiguous(&self) -> bool {
        let mut expected = 1u64;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(d);
        }
        true
    }
}

/// Bytes of `layout` over `storage` in C order: a plain extent when contiguous, a gather when
/// strided. Every element's position is checked against the storage here, once.
fn view_bytes(storage: Blob, layout: &Layout, big_endian: bool, cache: &Arc<ChunkCache>) -> Result<Arc<dyn TensorBytes>, String> {
    // Storage elements of torch's float4 are bytes (two values each).
    let es = if layout.dtype == DType::F4E2M1FN { 1 } else { layout.dtype.size() as u64 };
    if layout.shape.len() > MAX_RANK {
        return Err(format!("the tensor has {} dimensions, over numpy's {MAX_RANK}", layout.shape.len()));
    }
    let count = Tensor::element_count(&layout.shape).ok_or("the tensor's shape overflows")?;
    let len = count.checked_mul(es).ok_or("the tensor's size overflows")?;
    if count > 0 {
        let mut last = layout.offset;
        for (&d, &s) in layout.shape.iter().zip(&layout.stride) {
            last = (d - 1).checked_mul(s).and_then(|step| last.checked_add(step)).ok_or("the tensor's strides overflow")?;
        }
        let end = last.checked_add(1).and_then(|n| n.checked_mul(es)).ok_or("the tensor's strides overflow")?;
        if end > storage.len() {
            return Err(format!("the tensor needs {end} bytes of its storage, which holds {}", storage.len()));
        }
    }
    let plain: Arc<dyn TensorBytes> = if count == 0 {
        Arc::new(Extent { blob: storage, offset: 0, len: 0 })
    } else if layout.contiguous() {
        Arc::new(Extent { blob: storage, offset: layout.offset * es, len })
    } else {
        Arc::new(Strided {
            storage,
            es,
            offset: layout.offset,
            shape: layout.shape.clone(),
            stride: layout.stride.clone(),
            len,
            cache: cache.clone(),
            cache_id: cache.new_id(),
        })
    };
    Ok(match layout.dtype.swap_unit() {
        unit if big_endian && unit > 1 => Arc::new(ByteSwapped { inner: plain, unit }),
        _ => plain,
    })
}

/// A strided view gathered into C order on read: only the storage blocks the read range needs
/// are read, through the chunk cache (a transposed matrix visits each block many times).
struct Strided {
    storage: Blob,
    es: u64,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
    len: u64,
    cache: Arc<ChunkCache>,
    cache_id: u64,
}

impl Strided {
    fn block(&self, number: u64) -> Result<Arc<[u8]>, ReadError> {
        self.cache.get_or_load((self.cache_id, number), || {
            let start = number * GATHER_BLOCK;
            self.storage.read_vec(start, GATHER_BLOCK.min(self.storage.len() - start))
        })
    }
}

impl TensorBytes for Strided {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if buf.is_empty() {
            return Ok(());
        }
        let first = offset / self.es;
        let last = (offset + buf.len() as u64 - 1) / self.es;
        // The multi-index of the first element, then an odometer.
        let mut index = vec![0u64; self.shape.len()];
        let mut rest = first;
        for (i, &d) in self.shape.iter().enumerate().rev() {
            index[i] = rest % d;
            rest /= d;
        }
        let mut position = self.offset + index.iter().zip(&self.stride).map(|(i, s)| i * s).sum::<u64>();
        let inner = self.shape.len() - 1;
        let end = offset + buf.len() as u64;
        let mut current: Option<(u64, Arc<[u8]>)> = None;
        let mut element = first;
        while element <= last {
            let byte = position * self.es;
            let number = byte / GATHER_BLOCK;
            let block = match &current {
                Some((n, b)) if *n == number => b.clone(),
                _ => {
                    let b = self.block(number)?;
                    current = Some((number, b.clone()));
                    b
                }
            };
            let at = byte % GATHER_BLOCK;
            // Elements adjacent in storage (inner stride 1) are copied as one run, within the block.
            let run = if self.stride[inner] == 1 {
                (self.shape[inner] - index[inner]).min(last - element + 1).min((block.len() as u64 - at) / self.es)
            } else {
                1
            };
            // The part of the run inside the requested range.
            let run_start = element * self.es;
            let from = offset.max(run_start);
            let to = end.min(run_start + run * self.es);
            let source = (at + from - run_start) as usize..(at + to - run_start) as usize;
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(&block[source]);
            element += run;
            // Advance the odometer by `run` (only the inner index moves by more than one).
            index[inner] += run;
            position += run * self.stride[inner];
            let mut dim = inner;
            while index[dim] == self.shape[dim] && dim > 0 {
                position -= index[dim] * self.stride[dim];
                index[dim] = 0;
                dim -= 1;
                index[dim] += 1;
                position += self.stride[dim];
            }
        }
        Ok(())
    }
}

/// `"module.Name"` of an object's class: a global, or in legacy files a module class saved
/// as the persistent id `('module', class, source file, source)`.
fn class_of(pickle: &Pickle, o: &Object) -> Option<String> {
    match pickle.node(&o.class) {
        Some(Node::Persistent(pid)) => module_class(pickle, pid),
        _ => pickle.class_name(o),
    }
}

fn module_class(pickle: &Pickle, pid: &Value) -> Option<String> {
    match pickle.sequence(pid)? {
        [kind, class, ..] if pickle.text(kind).as_deref() == Some("module") => {
            pickle.global(class).map(|(m, n)| format!("{m}.{n}"))
        }
        _ => None,
    }
}

/// A storage reference: the pid tuple `('storage', class, key, location, numel[, view])`.
struct StorageRef {
    key: String,
    /// `None` for `UntypedStorage` (bytes; the tensor gives the dtype).
    dtype: Option<DType>,
    numel: u64,
    /// Bytes, for an untyped storage.
    bytes: Option<u64>,
    /// Legacy view metadata: (element offset, element count) within the root storage.
    view: Option<(u64, u64)>,
}

fn storage_of(pickle: &Pickle, pid: &Value) -> Result<StorageRef, String> {
    let items = pickle.sequence(pid).ok_or("a persistent id that is not a tuple")?;
    if items.len() < 5 || pickle.text(&items[0]).as_deref() != Some("storage") {
        return Err("a persistent id that is not a storage".into());
    }
    let (_, class) = pickle.global(&items[1]).ok_or("a storage without a storage class")?;
    let key = pickle.text(&items[2]).ok_or("a storage key that is not a string")?.into_owned();
    let numel = pickle.int(&items[4]).and_then(|n| u64::try_from(n).ok()).ok_or("a storage size that is not a count")?;
    let dtype = match class {
        "UntypedStorage" => None,
        typed => Some(storage_dtype(typed).ok_or_else(|| format!("unknown storage class {typed}"))?),
    };
    let view = items.get(5).and_then(|v| pickle.sequence(v)).and_then(|v| match v {
        [_, offset, count] => Some((u64::try_from(pickle.int(offset)?).ok()?, u64::try_from(pickle.int(count)?).ok()?)),
        _ => None,
    });
    Ok(StorageRef { key, dtype, numel, bytes: dtype.is_none().then_some(numel), view })
}

/// The dtype of a typed storage class (docs/formats/pytorch.md#storage-types-and-dtypes).
fn storage_dtype(class: &str) -> Option<DType> {
    Some(match class {
        "DoubleStorage" => DType::F64,
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" | "QInt32Storage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" | "QInt8Storage" => DType::I8,
        "ByteStorage" | "QUInt8Storage" => DType::U8,
        "BoolStorage" => DType::Bool,
        "ComplexFloatStorage" => DType::C64,
        "ComplexDoubleStorage" => DType::C128,
        _ => return None,
    })
}

/// A `torch.<dtype>` name (docs/formats/pytorch.md#storage-types-and-dtypes).
pub(crate) fn torch_dtype(name: &str) -> Result<DType, String> {
    Ok(match name {
        "float32" | "float" => DType::F32,
        "float64" | "double" => DType::F64,
        "float16" | "half" => DType::F16,
        "bfloat16" => DType::BF16,
        "int64" | "long" => DType::I64,
        "int32" | "int" | "qint32" => DType::I32,
        "int16" | "short" => DType::I16,
        "int8" | "qint8" => DType::I8,
        "uint8" | "quint8" => DType::U8,
        "uint16" => DType::U16,
        "uint32" => DType::U32,
        "uint64" => DType::U64,
        "bool" => DType::Bool,
        "complex64" | "cfloat" => DType::C64,
        "complex128" | "cdouble" => DType::C128,
        "float8_e4m3fn" => DType::F8E4M3FN,
        "float8_e5m2" => DType::F8E5M2,
        "float8_e4m3fnuz" => DType::F8E4M3FNUZ,
        "float8_e5m2fnuz" => DType::F8E5M2FNUZ,
        "float8_e8m0fnu" => DType::F8E8M0FNU,
        "float4_e2m1fn_x2" => DType::F4E2M1FN,
        other => return Err(format!("torch.{other} has no wfs element type")),
    })
}

/// A numpy dtype object: `numpy.dtype('f8', False, True)` with BUILD state `(3, '<', ...)`.
fn numpy_dtype(pickle: &Pickle, v: &Value) -> Result<(DType, bool), String> {
    let o = pickle.object(v).ok_or("numpy array without a dtype object")?;
    let code = o.args.first().and_then(|c| pickle.text(c)).ok_or("numpy dtype without a type code")?;
    let order = o.state.as_ref().and_then(|s| pickle.sequence(s)).and_then(|s| s.get(1)).and_then(|b| pickle.text(b));
    let dtype = crate::npy::numeric_dtype(&code).ok_or_else(|| format!("numpy dtype {code} is not a numeric type wfs exposes"))?;
    Ok((dtype, order.as_deref() == Some(">")))
}

/// A numpy scalar (`numpy.core.multiarray.scalar(dtype, bytes)`) as a JSON number.
fn numpy_scalar(pickle: &Pickle, args: &[Value]) -> Option<Json> {
    let (dtype, big_endian) = numpy_dtype(pickle, args.first()?).ok()?;
    let mut raw = pickle.bytes(args.get(1)?)?.to_vec();
    if raw.len() != dtype.size() {
        return None;
    }
    if big_endian {
        raw.reverse();
    }
    let int = |signed: bool| {
        let fill = if signed && raw.last().is_some_and(|b| b & 0x80 != 0) { 0xFF } else { 0 };
        let mut wide = [fill; 16];
        wide[..raw.len()].copy_from_slice(&raw);
        scalar_json(&Value::Int(i128::from_le_bytes(wide)))
    };
    Some(match dtype {
        DType::Bool => json!(raw[0] != 0),
        DType::I8 | DType::I16 | DType::I32 | DType::I64 => int(true),
        DType::U8 | DType::U16 | DType::U32 | DType::U64 => int(false),
        DType::F16 => float_json(f64::from(crate::dtype::f16_to_f32(u16::from_le_bytes([raw[0], raw[1]])))),
        DType::F32 => float_json(f64::from(f32::from_le_bytes(raw[..4].try_into().ok()?))),
        DType::F64 => float_json(f64::from_le_bytes(raw[..8].try_into().ok()?)),
        _ => return None,
    })
}

/// A dict key as a name component, at most `MAX_KEY_TEXT` bytes (a key of shared tuples could
/// otherwise spell out exponentially many items).
fn key_text(pickle: &Pickle, k: &Value) -> String {
    let mut out = String::new();
    write_key(pickle, k, 8, &mut out);
    if out.len() > MAX_KEY_TEXT {
        let cut = (0..=MAX_KEY_TEXT).rev().find(|&i| out.is_char_boundary(i)).unwrap_or(0);
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// Appends the text of a key whose tuples nest at most `depth` deep (deeper ones are `...`),
/// stopping once `out` is longer than `MAX_KEY_TEXT`.
fn write_key(pickle: &Pickle, k: &Value, depth: usize, out: &mut String) {
    if out.len() > MAX_KEY_TEXT {
        return;
    }
    match k {
        Value::Str(s) => out.push_str(&s[..(0..=s.len().min(MAX_KEY_TEXT + 1)).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)]),
        Value::Bytes(b) => out.push_str(&String::from_utf8_lossy(&b[..b.len().min(MAX_KEY_TEXT + 1)])),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::BigInt(s) => out.push_str(s),
        Value::Float(f) => out.push_str(&f.to_string()),
        Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        Value::None => out.push_str("None"),
        Value::Ref(_) => match (pickle.sequence(k), pickle.global(k)) {
            (Some(_), _) if depth == 0 => out.push_str("..."),
            (Some(items), _) => {
                out.push('(');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_key(pickle, item, depth - 1, out);
                    if out.len() > MAX_KEY_TEXT {
                        return;
                    }
                }
                out.push(')');
            }
            (None, Some((m, n))) => out.push_str(&format!("{m}.{n}")),
            (None, None) => out.push('?'),
        },
    }
}

fn scalar_json(v: &Value) -> Json {
    match v {
        Value::None | Value::Ref(_) => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => i64::try_from(*i)
            .map(Json::from)
            .or_else(|_| u64::try_from(*i).map(Json::from))
            .unwrap_or_else(|_| json!(i.to_string())),
        Value::BigInt(s) => json!(s.to_string()),
        Value::Float(f) => float_json(*f),
        Value::Str(s) => json!(s.to_string()),
        Value::Bytes(b) => bytes_json(b),
    }
}

/// Finite floats as numbers; NaN and infinities (which JSON lacks) as Python spells them.
fn float_json(f: f64) -> Json {
    serde_json::Number::from_f64(f).map(Json::Number).unwrap_or_else(|| {
        json!(if f.is_nan() { "nan" } else if f > 0.0 { "inf" } else { "-inf" })
    })
}

fn bytes_json(bytes: &[u8]) -> Json {
    // Standard base64 with padding.
    json!({"__bytes__": STANDARD.encode(bytes)})
}

/// Plain data (sys_info) as JSON, without tensors: at most `budget` values (shared lists could
/// otherwise unfold into exponentially many).
fn plain_json(pickle: &Pickle, v: &Value, depth: usize, budget: &mut u32) -> Json {
    if depth > 16 || *budget == 0 {
        return Json::Null;
    }
    *budget -= 1;
    match pickle.node(v) {
        None => scalar_json(v),
        Some(Node::Dict(items)) => {
            Json::Object(items.iter().map(|(k, v)| (key_text(pickle, k), plain_json(pickle, v, depth + 1, budget))).collect())
        }
        Some(Node::List(items) | Node::Tuple(items)) => {
            Json::Array(items.iter().map(|i| plain_json(pickle, i, depth + 1, budget)).collect())
        }
        Some(_) => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_standard_padded_base64() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy"), ("\u{fb}\u{ff}", "w7vDvw==")] {
            assert_eq!(bytes_json(plain.as_bytes()), json!({"__bytes__": encoded}));
        }
    }

    #[test]
    fn names_join_with_slash_outside_modules_and_dot_inside() {
        assert_eq!(child("", "fc1", false), "fc1");
        assert_eq!(child("state_dict", "gru.weight", false), "state_dict/gru.weight");
        assert_eq!(child("model/model", "0", true), "model/model.0");
    }

    fn gather(shape: &[u64], stride: &[u64], offset: u64, storage: Vec<u8>, es: u64) -> Vec<u8> {
        let layout = Layout { dtype: DType::U8, offset, shape: shape.to_vec(), stride: stride.to_vec() };
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let len = Tensor::element_count(shape).unwrap() * es;
        let view = Strided { storage: Blob::Memory(Arc::new(storage)), es, offset, shape: layout.shape, stride: layout.stride, len, cache: cache.clone(), cache_id: cache.new_id() };
        // Byte by byte and whole: every range gives the same bytes.
        let mut whole = vec![0u8; len as usize];
        view.read_at(0, &mut whole).unwrap();
        for at in 0..len {
            let mut one = [0u8];
            view.read_at(at, &mut one).unwrap();
            assert_eq!(one[0], whole[at as usize]);
        }
        whole
    }

    #[test]
    fn strided_views_gather_in_c_order() {
        // arange(12).view(3, 4).t(): shape (4, 3), stride (1, 4).
        let storage: Vec<u8> = (0..12).collect();
        assert_eq!(gather(&[4, 3], &[1, 4], 0, storage.clone(), 1), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        // x[1::3] and two-byte elements.
        assert_eq!(gather(&[4], &[3], 1, storage.clone(), 1), [1, 4, 7, 10]);
        // Rows of a block: inner runs copied whole.
        assert_eq!(gather(&[2, 3], &[4, 1], 1, storage.clone(), 1), [1, 2, 3, 5, 6, 7]);
        assert_eq!(gather(&[2, 1, 2], &[6, 1, 1], 2, storage.clone(), 1), [2, 3, 8, 9]);
        let wide: Vec<u8> = (0..24).collect();
        assert_eq!(gather(&[2, 2], &[1, 3], 1, wide, 2), [2, 3, 8, 9, 4, 5, 10, 11]);
    }

    #[test]
    fn views_outside_their_storage_are_refused() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let storage = Blob::Memory(Arc::new(vec![0u8; 48]));
        let layout = |offset, shape: &[u64], stride: &[u64]| Layout { dtype: DType::F32, offset, shape: shape.to_vec(), stride: stride.to_vec() };
        assert!(view_bytes(storage.clone(), &layout(0, &[3, 4], &[4, 1]), false, &cache).is_ok());
        assert!(view_bytes(storage.clone(), &layout(1, &[3, 4], &[4, 1]), false, &cache).is_err());
        assert!(view_bytes(storage.clone(), &layout(0, &[4, 3], &[1, 4]), false, &cache).is_ok());
        assert!(view_bytes(storage.clone(), &layout(0, &[u64::MAX, 2], &[1, 1]), false, &cache).is_err());
        assert!(view_bytes(storage.clone(), &layout(0, &[2, 2], &[u64::MAX, 1]), false, &cache).is_err());
        assert!(view_bytes(storage.clone(), &layout(0, &[1; 65], &[1; 65]), false, &cache).is_err());
        // An empty tensor needs no bytes wherever it points.
        assert!(view_bytes(storage, &layout(1000, &[0, 3], &[3, 1]), false, &cache).is_ok());
    }
}
