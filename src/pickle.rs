//! A Python pickle interpreter that never executes anything (docs/formats/pytorch.md#the-pickle-layer-a-non-executing-interpreter).
//!
//! Every opcode of protocols 0-5 is understood, but no class is imported and no callable is
//! called: `GLOBAL`/`STACK_GLOBAL` push a name, and `REDUCE`, `NEWOBJ`, `INST`, `OBJ` and
//! `BUILD` make inert objects that record their class, arguments and state. Callers (the
//! PyTorch reader) interpret those objects as data. Every resource the input can make the
//! interpreter spend is bounded (`Limits`).

use crate::source::Blob;
use std::collections::HashMap;
use std::rc::Rc;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("{0}")]
pub struct PickleError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError(msg.into()))
}

/// What a pickle may make the interpreter spend.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Opcodes executed.
    pub ops: u64,
    /// Objects made plus items put into containers.
    pub objects: u64,
    /// Memo entries.
    pub memo: usize,
    /// Nested MARKs open at once.
    pub marks: usize,
    /// Bytes of strings and bytes held, all together.
    pub bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { ops: 1 << 28, objects: 1 << 23, memo: 1 << 23, marks: 1 << 12, bytes: 1 << 30 }
    }
}

/// Index of a node in `Pickle::nodes`.
pub type Id = u32;

/// A pickled value. Scalars are held inline; everything with identity is a node.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    /// An integer too large for i128, as text (decimal, or hex two's complement).
    BigInt(Rc<str>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Ref(Id),
}

/// A value with identity (shared through the memo).
#[derive(Debug)]
pub enum Node {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// A `module.name` reference from GLOBAL or STACK_GLOBAL: never imported.
    Global { module: Rc<str>, name: Rc<str> },
    /// What REDUCE, NEWOBJ, INST or OBJ would have built by calling `class`.
    Object(Object),
    /// What `persistent_load(pid)` would have returned.
    Persistent(Value),
}

/// An object that was never constructed: its class (or factory), the arguments it would have
/// been called with, the state BUILD would have applied, and items added by SETITEM(S) and
/// APPEND(S) (dict and list subclasses such as `OrderedDict`).
#[derive(Debug)]
pub struct Object {
    pub class: Value,
    pub args: Vec<Value>,
    pub state: Option<Value>,
    pub items: Vec<(Value, Value)>,
    pub elements: Vec<Value>,
}

/// An interpreted pickle: its nodes, the value STOP returned, and every global it names.
#[derive(Debug)]
pub struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Value,
    /// `(module, name)` of each distinct global, in the order first named, Python 2 modules
    /// under their Python 3 names: what `pickle.load` would have imported.
    pub globals: Vec<(String, String)>,
}

/// What importing a pickle's global would mean (docs/tree.md 7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// In the allow-list of `torch.load(weights_only=True)`, or numpy's array reconstruction.
    Safe,
    /// Any other class or function: loading would import it and may call it.
    Unknown,
    /// Runs code or touches the system when the pickle is loaded.
    Dangerous,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Safe => "safe",
            Verdict::Unknown => "unknown",
            Verdict::Dangerous => "dangerous",
        }
    }
}

/// Modules whose every name is dangerous: they run commands or code, open files or sockets, or
/// import anything (picklescan's list, plus `importlib`, `marshal` and `code`).
const DANGEROUS_MODULES: &[&str] = &[
    "os", "posix", "nt", "subprocess", "commands", "pty", "sys", "runpy", "shutil", "socket", "ssl", "webbrowser",
    "ctypes", "asyncio", "aiohttp", "bdb", "pdb", "httplib", "http.client", "requests", "urllib.request", "pickle",
    "_pickle", "dill", "pip", "pydoc", "profile", "cProfile", "timeit", "test", "venv", "uuid", "numpy.f2py",
    "numpy.testing._private.utils", "importlib", "marshal", "code", "distutils.file_util", "_osx_support",
    "_aix_support", "_pyrepl",
];

/// Single dangerous names in otherwise harmless modules.
const DANGEROUS_NAMES: &[(&str, &[&str])] = &[
    ("builtins", &[
        "eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__", "open", "apply", "breakpoint",
        "globals", "locals", "vars", "input", "help",
    ]),
    ("types", &["CodeType", "FunctionType"]),
    ("functools", &["partial", "reduce"]),
    ("operator", &["attrgetter", "itemgetter", "methodcaller"]),
    ("_operator", &["attrgetter", "itemgetter", "methodcaller"]),
    ("logging", &["FileHandler"]),
    ("_io", &["FileIO", "open"]),
    ("io", &["FileIO", "open"]),
    ("pkgutil", &["resolve_name"]),
    ("cloudpickle.cloudpickle", &["_builtin_type", "_make_function", "_function_setstate", "_make_cell", "_make_empty_cell", "subimport"]),
    ("code", &["InteractiveInterpreter.runcode"]),
    ("doctest", &["debug_script"]),
    ("ensurepip", &["_run_pip"]),
    ("imaplib", &["IMAP4_stream"]),
    ("trace", &["Trace.run", "Trace.runctx"]),
    ("torch.serialization", &["load"]),
    ("torch._inductor.codecache", &["compile_file"]),
    ("torch.jit.unsupported_tensor_ops", &["execWrapper"]),
    ("torch.utils.collect_env", &["run"]),
    ("torch._dynamo.guards", &["GuardBuilder.get"]),
    ("torch.fx.experimental.symbolic_shapes", &["ShapeEnv.evaluate_guards_expression"]),
    ("torch.utils._config_module", &["ConfigModule.load_config"]),
    ("torch.utils.data.datapipes.utils.decoder", &["basichandlers"]),
];

/// The `torch.<dtype>` names (`torch.storage._dtype_to_storage_type_map`, `_new_dtypes`).
const TORCH_DTYPES: &[&str] = &[
    "float64", "double", "float32", "float", "float16", "half", "bfloat16", "int64", "long", "int32", "int",
    "int16", "short", "int8", "uint8", "bool", "complex64", "cfloat", "complex128", "cdouble", "complex32", "chalf",
    "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "uint16", "uint32", "uint64", "uint1", "uint2", "uint3",
    "uint4", "uint5", "uint6", "uint7", "int1", "int2", "int3", "int4", "int5", "int6", "int7", "float8_e4m3fn",
    "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "bits8", "bits16",
    "bits1x8", "bits2x4", "bits4x2",
];

/// `torch.load(weights_only=True)`'s allow-list (torch/_weights_only_unpickler.py), and the
/// numpy array reconstruction that `numpy.load(allow_pickle=True)` files and checkpoints use.
fn is_safe(module: &str, name: &str) -> bool {
    match module {
        "collections" => matches!(name, "OrderedDict" | "Counter"),
        "_codecs" => name == "encode",
        "builtins" => matches!(name, "bytearray" | "set" | "complex"),
        "torch" => {
            name.ends_with("Storage")
                || name.ends_with("Tensor")
                || matches!(name, "Size" | "device" | "per_tensor_affine" | "per_tensor_symmetric" | "per_channel_affine"
                    | "per_channel_symmetric" | "per_channel_affine_float_qparams")
                || TORCH_DTYPES.contains(&name)
        }
        "torch.storage" => matches!(name, "UntypedStorage" | "TypedStorage"),
        "torch.nn.parameter" => name == "Parameter",
        "torch.serialization" => name == "_get_layout",
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch._utils" => name.starts_with("_rebuild_"),
        "numpy" => matches!(name, "ndarray" | "dtype"),
        "numpy.core.multiarray" | "numpy._core.multiarray" => matches!(name, "_reconstruct" | "scalar"),
        "numpy.dtypes" => name.ends_with("DType"),
        _ => false,
    }
}

/// The verdict on importing `module.name`.
pub fn verdict(module: &str, name: &str) -> Verdict {
    let within = |m: &str| module == m || module.strip_prefix(m).is_some_and(|rest| rest.starts_with('.'));
    let named = DANGEROUS_NAMES.iter().any(|(m, names)| *m == module && names.contains(&name));
    if named || DANGEROUS_MODULES.iter().any(|m| within(m)) {
        Verdict::Dangerous
    } else if is_safe(module, name) {
        Verdict::Safe
    } else {
        Verdict::Unknown
    }
}

/// Adds a pickle's globals to `info.json` as `pickle_globals[part]` (`{"module.name": verdict}`)
/// and counts its dangerous ones into `unsafe_globals` (docs/tree.md 7.1). Every reader that
/// interprets a pickle calls this for it, so `wfs scan` sees every pickle a mount reads.
pub fn record_globals(info: &mut serde_json::Map<String, serde_json::Value>, part: &str, pickle: &Pickle) {
    let mut verdicts = serde_json::Map::new();
    let mut dangerous = 0u64;
    for (module, name) in &pickle.globals {
        let v = verdict(module, name);
        dangerous += u64::from(v == Verdict::Dangerous);
        verdicts.insert(format!("{module}.{name}"), v.name().into());
    }
    let parts = info.entry("pickle_globals").or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if let serde_json::Value::Object(parts) = parts {
        parts.insert(part.to_string(), serde_json::Value::Object(verdicts));
    }
    let count = info.get("unsafe_globals").and_then(serde_json::Value::as_u64).unwrap_or(0);
    info.insert("unsafe_globals".into(), (count + dangerous).into());
}

impl Pickle {
    pub fn node(&self, v: &Value) -> Option<&Node> {
        match v {
            Value::Ref(id) => self.nodes.get(*id as usize),
            _ => None,
        }
    }

    /// `(module, name)` when `v` is a global reference; Python 2 module names are mapped to
    /// their Python 3 names (docs/formats/pytorch.md#the-pickle-layer-a-non-executing-interpreter).
    pub fn global(&self, v: &Value) -> Option<(&str, &str)> {
        match self.node(v)? {
            Node::Global { module, name } => Some((python3_module(module), name)),
            _ => None,
        }
    }

    /// The object `v` refers to, if it is one.
    pub fn object(&self, v: &Value) -> Option<&Object> {
        match self.node(v)? {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }

    /// `"module.name"` of an object's class, when the class is a global.
    pub fn class_name(&self, o: &Object) -> Option<String> {
        self.global(&o.class).map(|(m, n)| format!("{m}.{n}"))
    }

    /// The items of a tuple or list.
    pub fn sequence(&self, v: &Value) -> Option<&[Value]> {
        match self.node(v)? {
            Node::Tuple(items) | Node::List(items) => Some(items),
            _ => None,
        }
    }

    /// Text of a str, or of ASCII-or-UTF-8 bytes (Python 2 `str`).
    pub fn text<'a>(&self, v: &'a Value) -> Option<std::borrow::Cow<'a, str>> {
        match v {
            Value::Str(s) => Some(std::borrow::Cow::Borrowed(s)),
            Value::Bytes(b) => Some(String::from_utf8_lossy(b)),
            _ => None,
        }
    }

    pub fn int(&self, v: &Value) -> Option<i128> {
        match v {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i128::from(*b)),
            _ => None,
        }
    }

    /// The bytes of a bytes value, also when pickled at protocol 2 as
    /// `_codecs.encode(text, 'latin1')` or wrapped as `bytearray(...)`.
    pub fn bytes(&self, v: &Value) -> Option<Rc<[u8]>> {
        let mut v = v;
        // `bytearray(bytearray(...))` may nest as deep as the file likes; a real file has one.
        for _ in 0..8 {
            if let Value::Bytes(b) = v {
                return Some(b.clone());
            }
            let o = self.object(v)?;
            match self.global(&o.class)? {
                ("_codecs", "encode") => {
                    let Value::Str(text) = o.args.first()? else { return None };
                    let codec = o.args.get(1).and_then(|c| self.text(c)).unwrap_or("utf-8".into()).to_ascii_lowercase();
                    return if matches!(codec.as_str(), "latin1" | "latin-1" | "iso-8859-1") {
                        text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect::<Option<Vec<u8>>>().map(Into::into)
                    } else {
                        Some(text.as_bytes().into())
                    };
                }
                ("builtins", "bytearray" | "bytes") => match o.args.first() {
                    None => return Some(Rc::from(&[][..])),
                    Some(inner) => v = inner,
                },
                _ => return None,
            }
        }
        None
    }
}

/// `__builtin__` and `copy_reg` are how protocol < 3 spells `builtins` and `copyreg`.
fn python3_module(module: &str) -> &str {
    match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        other => other,
    }
}

/// Reads a pickle from `blob` at `offset`; returns it and the offset just past its STOP.
pub fn load(blob: &Blob, offset: u64, limits: Limits) -> Result<(Pickle, u64), PickleError> {
    let mut vm = Vm {
        input: Input { blob, pos: offset, buf: Vec::new(), buf_start: offset },
        limits,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        marked: 0,
        memo: HashMap::new(),
        objects: 0,
        bytes: 0,
        globals: Vec::new(),
        named: std::collections::HashSet::new(),
    };
    let root = vm.run()?;
    Ok((Pickle { nodes: vm.nodes, root, globals: vm.globals }, vm.input.pos))
}

/// The pickle bytes, read through a buffer.
struct Input<'a> {
    blob: &'a Blob,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

const READ_AHEAD: u64 = 64 << 10;

impl Input<'_> {
    fn truncated() -> PickleError {
        PickleError("pickle is truncated".into())
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        let at = self.pos - self.buf_start;
        if let Some(&b) = self.buf.get(at as usize) {
            self.pos += 1;
            return Ok(b);
        }
        let len = READ_AHEAD.min(self.blob.len().saturating_sub(self.pos));
        if len == 0 {
            return Err(Self::truncated());
        }
        self.buf = self.blob.read_vec(self.pos, len).map_err(|e| PickleError(format!("reading the pickle: {e}")))?;
        self.buf_start = self.pos;
        self.byte()
    }

    /// `n` bytes; `n` is checked against what is left before anything is allocated.
    fn take(&mut self, n: u64) -> Result<Vec<u8>, PickleError> {
        if n > self.blob.len().saturating_sub(self.pos) {
            return Err(Self::truncated());
        }
        let at = (self.pos - self.buf_start) as usize;
        let out = if at as u64 + n <= self.buf.len() as u64 {
            self.buf[at..at + n as usize].to_vec()
        } else {
            self.blob.read_vec(self.pos, n).map_err(|e| PickleError(format!("reading the pickle: {e}")))?
        };
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.byte()?;
        }
        Ok(out)
    }

    /// A text line without its `\n`, at most `max` bytes.
    fn line(&mut self, max: u64) -> Result<Vec<u8>, PickleError> {
        let mut out = Vec::new();
        loop {
            match self.byte()? {
                b'\n' => return Ok(out),
                b => {
                    if out.len() as u64 >= max {
                        return fail("pickle text line is too long");
                    }
                    out.push(b);
                }
            }
        }
    }
}

struct Vm<'a> {
    input: Input<'a>,
    limits: Limits,
    nodes: Vec<Node>,
    stack: Vec<Value>,
    marks: Vec<Vec<Value>>,
    /// Values held by the stacks that MARKs saved.
    marked: usize,
    memo: HashMap<u64, Value>,
    objects: u64,
    bytes: u64,
    /// Distinct globals named, in order, and the set of them.
    globals: Vec<(String, String)>,
    named: std::collections::HashSet<(String, String)>,
}

/// Longest protocol-0 text argument (a GLOBAL name, a text number); strings have `Limits::bytes`.
const MAX_NAME: u64 = 64 << 10;

impl Vm<'_> {
    fn count(&mut self, n: u64) -> Result<(), PickleError> {
        self.objects = self.objects.saturating_add(n);
        if self.objects > self.limits.objects {
            return fail(format!("pickle makes more than {} objects", self.limits.objects));
        }
        Ok(())
    }

    fn add(&mut self, node: Node) -> Result<Value, PickleError> {
        let size = match &node {
            Node::List(v) | Node::Tuple(v) | Node::Set(v) => v.len() as u64,
            Node::Dict(v) => v.len() as u64,
            _ => 0,
        };
        self.count(1 + size)?;
        let id = Id::try_from(self.nodes.len()).map_err(|_| PickleError("too many pickle objects".into()))?;
        self.nodes.push(node);
        Ok(Value::Ref(id))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack.pop().ok_or_else(|| PickleError("pickle pops from an empty stack".into()))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        self.stack.last().ok_or_else(|| PickleError("pickle reads an empty stack".into()))
    }

    /// The items pushed since the last MARK; the stack before it is restored.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let saved = self.marks.pop().ok_or_else(|| PickleError("pickle pops a MARK that was never set".into()))?;
        self.marked -= saved.len();
        Ok(std::mem::replace(&mut self.stack, saved))
    }

    fn spend_bytes(&mut self, n: u64) -> Result<(), PickleError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.bytes {
            return fail(format!("pickle holds more than {} bytes of strings", self.limits.bytes));
        }
        Ok(())
    }

    fn text_bytes(&mut self, n: u64) -> Result<Vec<u8>, PickleError> {
        self.spend_bytes(n)?;
        self.input.take(n)
    }

    fn string(&mut self, n: u64) -> Result<Value, PickleError> {
        let raw = self.text_bytes(n)?;
        // Python writes surrogates that UTF-8 cannot hold with `surrogatepass`; keep what is valid.
        Ok(Value::Str(String::from_utf8_lossy(&raw).into()))
    }

    fn binary(&mut self, n: u64) -> Result<Value, PickleError> {
        Ok(Value::Bytes(self.text_bytes(n)?.into()))
    }

    fn memo_put(&mut self, key: u64, v: Value) -> Result<(), PickleError> {
        if self.memo.len() >= self.limits.memo && !self.memo.contains_key(&key) {
            return fail(format!("pickle memo grows past {} entries", self.limits.memo));
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let v = self.memo.get(&key).cloned().ok_or_else(|| PickleError(format!("pickle reads memo entry {key}, which was never set")))?;
        self.stack.push(v);
        Ok(())
    }

    fn global(&mut self, module: &[u8], name: &[u8]) -> Result<(), PickleError> {
        let module: Rc<str> = String::from_utf8_lossy(module).into();
        let name: Rc<str> = String::from_utf8_lossy(name).into();
        let key = (python3_module(&module).to_string(), name.to_string());
        if self.named.insert(key.clone()) {
            self.globals.push(key);
        }
        let v = self.add(Node::Global { module, name })?;
        self.stack.push(v);
        Ok(())
    }

    fn object(&mut self, class: Value, args: Vec<Value>) -> Result<(), PickleError> {
        self.count(args.len() as u64)?;
        let v = self.add(Node::Object(Object { class, args, state: None, items: Vec::new(), elements: Vec::new() }))?;
        self.stack.push(v);
        Ok(())
    }

    /// The items of an argument tuple (or list) as owned values.
    fn args_of(&self, v: &Value) -> Vec<Value> {
        match v {
            Value::Ref(id) => match &self.nodes[*id as usize] {
                Node::Tuple(items) | Node::List(items) => items.clone(),
                _ => vec![v.clone()],
            },
            Value::None => Vec::new(),
            other => vec![other.clone()],
        }
    }

    fn target(&mut self, at: usize) -> Result<&mut Node, PickleError> {
        match self.stack.get(at) {
            Some(Value::Ref(id)) => Ok(&mut self.nodes[*id as usize]),
            _ => fail("pickle adds items to something that is not a container"),
        }
    }

    /// SETITEM(S): pairs into the dict (or dict-like object) below them.
    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if items.len() % 2 == 1 {
            return fail("pickle SETITEMS with an odd number of items");
        }
        self.count(items.len() as u64 / 2)?;
        let at = self.stack.len().checked_sub(1).ok_or_else(|| PickleError("pickle SETITEMS on an empty stack".into()))?;
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        match self.target(at)? {
            Node::Dict(d) => d.extend(pairs),
            Node::Object(o) => o.items.extend(pairs),
            _ => return fail("pickle sets items on something that is not a dict"),
        }
        Ok(())
    }

    /// APPEND(S) and ADDITEMS: values into the list, set or list-like object below them.
    fn append(&mut self, values: Vec<Value>) -> Result<(), PickleError> {
        self.count(values.len() as u64)?;
        let at = self.stack.len().checked_sub(1).ok_or_else(|| PickleError("pickle APPENDS on an empty stack".into()))?;
        match self.target(at)? {
            Node::List(l) | Node::Set(l) => l.extend(values),
            Node::Object(o) => o.elements.extend(values),
            _ => return fail("pickle appends to something that is not a list"),
        }
        Ok(())
    }

    fn int_line(&mut self) -> Result<Value, PickleError> {
        let line = self.input.line(MAX_NAME)?;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim().trim_end_matches('L');
        match text {
            "01" => return Ok(Value::Bool(true)),
            "00" => return Ok(Value::Bool(false)),
            _ => {}
        }
        match text.parse::<i128>() {
            Ok(i) => Ok(Value::Int(i)),
            Err(_) if !text.is_empty() && text.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Value::BigInt(text.into()))
            }
            Err(_) => fail(format!("pickle has a malformed integer {text:?}")),
        }
    }

    /// LONG1 / LONG4: `n` bytes of little-endian two's complement.
    fn long(&mut self, n: u64) -> Result<Value, PickleError> {
        let raw = self.text_bytes(n)?;
        if raw.len() <= 16 {
            let fill = if raw.last().is_some_and(|b| b & 0x80 != 0) { 0xFF } else { 0 };
            let mut bytes = [fill; 16];
            bytes[..raw.len()].copy_from_slice(&raw);
            return Ok(Value::Int(i128::from_le_bytes(bytes)));
        }
        let hex: String = raw.iter().rev().map(|b| format!("{b:02x}")).collect();
        Ok(Value::BigInt(format!("0x{hex}").into()))
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        let mut ops = 0u64;
        loop {
            ops += 1;
            if ops > self.limits.ops {
                return fail(format!("pickle runs more than {} opcodes", self.limits.ops));
            }
            // Scalars pushed and never stored make no objects, but fill the stacks.
            if (self.stack.len() + self.marked) as u64 > self.limits.objects {
                return fail(format!("pickle stacks more than {} values", self.limits.objects));
            }
            let op = self.input.byte()?;
            match op {
                b'.' => return self.pop(),
                0x80 => {
                    let protocol = self.input.byte()?;
                    if protocol > 5 {
                        return fail(format!("pickle protocol {protocol} is newer than 5"));
                    }
                }
                0x95 => {
                    self.input.array::<8>()?;
                }
                b'(' => {
                    if self.marks.len() >= self.limits.marks {
                        return fail(format!("pickle nests more than {} MARKs", self.limits.marks));
                    }
                    let saved = std::mem::take(&mut self.stack);
                    self.marked += saved.len();
                    self.marks.push(saved);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                // Scalars.
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.input.byte()?;
                    self.stack.push(Value::Int(i128::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.input.array()?);
                    self.stack.push(Value::Int(i128::from(v)));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.input.array()?);
                    self.stack.push(Value::Int(i128::from(v)));
                }
                0x8a => {
                    let n = self.input.byte()?;
                    let v = self.long(u64::from(n))?;
                    self.stack.push(v);
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.input.array()?);
                    let n = u64::try_from(n).map_err(|_| PickleError("pickle LONG4 with a negative length".into()))?;
                    let v = self.long(n)?;
                    self.stack.push(v);
                }
                b'I' | b'L' => {
                    let v = self.int_line()?;
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.input.array()?);
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let line = self.input.line(MAX_NAME)?;
                    let text = String::from_utf8_lossy(&line);
                    let v = text.trim().parse::<f64>().map_err(|_| PickleError(format!("pickle has a malformed float {text:?}")))?;
                    self.stack.push(Value::Float(v));
                }
                // Strings and bytes.
                b'X' => {
                    let n = u32::from_le_bytes(self.input.array()?);
                    let v = self.string(u64::from(n))?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.input.byte()?;
                    let v = self.string(u64::from(n))?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.input.array()?);
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'V' => {
                    let line = self.input.line(self.limits.bytes)?;
                    self.spend_bytes(line.len() as u64)?;
                    self.stack.push(Value::Str(raw_unicode_escape(&line).into()));
                }
                b'S' => {
                    let line = self.input.line(self.limits.bytes)?;
                    self.spend_bytes(line.len() as u64)?;
                    let v = python_string_literal(&line).ok_or_else(|| PickleError("pickle STRING is not a quoted literal".into()))?;
                    self.stack.push(Value::Bytes(v.into()));
                }
                b'U' | b'C' => {
                    let n = self.input.byte()?;
                    let v = self.binary(u64::from(n))?;
                    self.stack.push(v);
                }
                b'T' | b'B' => {
                    let n = u32::from_le_bytes(self.input.array()?);
                    let v = self.binary(u64::from(n))?;
                    self.stack.push(v);
                }
                0x8e | 0x96 => {
                    let n = u64::from_le_bytes(self.input.array()?);
                    let v = self.binary(n)?;
                    self.stack.push(v);
                }
                0x97 => return fail("pickle refers to an out-of-band buffer (protocol 5), which a file cannot carry"),
                0x98 => {}
                // Containers.
                b')' => {
                    let v = self.add(Node::Tuple(Vec::new()))?;
                    self.stack.push(v);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let at = self.stack.len().checked_sub(n).ok_or_else(|| PickleError("pickle TUPLE of a too short stack".into()))?;
                    let items = self.stack.split_off(at);
                    let v = self.add(Node::Tuple(items))?;
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.add(Node::Tuple(items))?;
                    self.stack.push(v);
                }
                b']' => {
                    let v = self.add(Node::List(Vec::new()))?;
                    self.stack.push(v);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.add(Node::List(items))?;
                    self.stack.push(v);
                }
                b'}' => {
                    let v = self.add(Node::Dict(Vec::new()))?;
                    self.stack.push(v);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.add(Node::Dict(Vec::new()))?;
                    self.stack.push(v);
                    self.set_items(items)?;
                }
                0x8f => {
                    let v = self.add(Node::Set(Vec::new()))?;
                    self.stack.push(v);
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.add(Node::Set(items))?;
                    self.stack.push(v);
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                // Memo.
                b'q' => {
                    let key = u64::from(self.input.byte()?);
                    let v = self.top()?.clone();
                    self.memo_put(key, v)?;
                }
                b'r' => {
                    let key = u64::from(u32::from_le_bytes(self.input.array()?));
                    let v = self.top()?.clone();
                    self.memo_put(key, v)?;
                }
                b'p' => {
                    let line = self.input.line(MAX_NAME)?;
                    let key = parse_memo_key(&line)?;
                    let v = self.top()?.clone();
                    self.memo_put(key, v)?;
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    let v = self.top()?.clone();
                    self.memo_put(key, v)?;
                }
                b'h' => {
                    let key = u64::from(self.input.byte()?);
                    self.memo_get(key)?;
                }
                b'j' => {
                    let key = u64::from(u32::from_le_bytes(self.input.array()?));
                    self.memo_get(key)?;
                }
                b'g' => {
                    let line = self.input.line(MAX_NAME)?;
                    let key = parse_memo_key(&line)?;
                    self.memo_get(key)?;
                }
                // Names and objects: recorded, never resolved or called.
                b'c' => {
                    let module = self.input.line(MAX_NAME)?;
                    let name = self.input.line(MAX_NAME)?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(m.as_bytes(), n.as_bytes())?,
                        _ => return fail("pickle STACK_GLOBAL with names that are not strings"),
                    }
                }
                0x82..=0x84 => {
                    let code = match op {
                        0x82 => u32::from(self.input.byte()?),
                        0x83 => u32::from(u16::from_le_bytes(self.input.array()?)),
                        _ => u32::from_le_bytes(self.input.array()?),
                    };
                    self.global(b"copyreg.extension", code.to_string().as_bytes())?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let args = self.args_of(&args);
                    self.reduce(class, args)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let args = self.args_of(&args);
                    self.object(class, args)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let args = self.args_of(&args);
                    self.object(class, args)?;
                }
                b'i' => {
                    let module = self.input.line(MAX_NAME)?;
                    let name = self.input.line(MAX_NAME)?;
                    let args = self.pop_mark()?;
                    self.global(&module, &name)?;
                    let class = self.pop()?;
                    self.object(class, args)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return fail("pickle OBJ without a class");
                    }
                    let class = items.remove(0);
                    self.object(class, items)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let at = self.stack.len().checked_sub(1).ok_or_else(|| PickleError("pickle BUILD on an empty stack".into()))?;
                    // BUILD on a plain container sets attributes Python would refuse; they are ignored.
                    if let Ok(Node::Object(o)) = self.target(at) {
                        o.state = Some(state);
                    }
                }
                b'P' => {
                    let line = self.input.line(MAX_NAME)?;
                    let pid = Value::Str(String::from_utf8_lossy(&line).into());
                    let v = self.add(Node::Persistent(pid))?;
                    self.stack.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.add(Node::Persistent(pid))?;
                    self.stack.push(v);
                }
                other => return fail(format!("pickle has an unknown opcode 0x{other:02x}")),
            }
        }
    }

    /// REDUCE: `copyreg._reconstructor(cls, base, state)` is how protocols 0 and 1 make an
    /// instance of `cls`; anything else is an object of its callable.
    fn reduce(&mut self, class: Value, args: Vec<Value>) -> Result<(), PickleError> {
        let reconstructor = matches!(&class, Value::Ref(id) if matches!(
            &self.nodes[*id as usize],
            Node::Global { module, name } if python3_module(module) == "copyreg" && &**name == "_reconstructor"
        ));
        match (reconstructor, args.first()) {
            (true, Some(cls)) => self.object(cls.clone(), Vec::new()),
            _ => self.object(class, args),
        }
    }
}

fn parse_memo_key(line: &[u8]) -> Result<u64, PickleError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| PickleError("pickle memo key is not a number".into()))
}

/// Protocol 0 `UNICODE`: raw-unicode-escape (`\uXXXX`, `\UXXXXXXXX`, other bytes latin-1).
fn raw_unicode_escape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let digits = match (raw[i], raw.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        let code = raw
            .get(i + 2..i + 2 + digits)
            .filter(|_| digits > 0)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        match code {
            Some(c) => {
                out.push(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
                i += 2 + digits;
            }
            None => {
                out.push(char::from(raw[i]));
                i += 1;
            }
        }
    }
    out
}

/// Protocol 0 `STRING`: a Python 2 string literal in quotes, with backslash escapes.
fn python_string_literal(line: &[u8]) -> Option<Vec<u8>> {
    let quote = *line.first()?;
    if !(quote == b'\'' || quote == b'"') || line.len() < 2 || *line.last()? != quote {
        return None;
    }
    let body = &line[1..line.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'\\' || i + 1 == body.len() {
            out.push(body[i]);
            i += 1;
            continue;
        }
        let c = body[i + 1];
        i += 2;
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                while i < body.len() && (b'0'..=b'7').contains(&body[i]) && v < 32 {
                    v = v * 8 + u32::from(body[i] - b'0');
                    i += 1;
                }
                out.push(v as u8);
            }
            b'x' => {
                let v = body.get(i..i + 2).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())?;
                out.push(v);
                i += 2;
            }
            b'\\' | b'\'' | b'"' => out.push(c),
            other => out.extend([b'\\', other]),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn run(bytes: &[u8]) -> Result<Pickle, PickleError> {
        load(&Blob::Memory(Arc::new(bytes.to_vec())), 0, Limits::default()).map(|(p, _)| p)
    }

    /// `pickle.dumps(OrderedDict(a=1), protocol=2)` as Python 3.12 writes it.
    #[test]
    fn ordered_dict_protocol_2() {
        let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aq\x02K\x01s.";
        let p = run(bytes).unwrap();
        let o = p.object(&p.root).unwrap();
        assert_eq!(p.class_name(o).as_deref(), Some("collections.OrderedDict"));
        assert_eq!(o.items.len(), 1);
        assert!(matches!(&o.items[0], (Value::Str(k), Value::Int(1)) if &**k == "a"));
    }

    /// `pickle.dumps([1, 'x', 2**70, -3, 1.5, b'\x00', None, True], protocol=0)`.
    #[test]
    fn protocol_0_text_opcodes() {
        let bytes = b"(lp0\nI1\naVx\np1\naL1180591620717411303424L\naI-3\naF1.5\nac_codecs\nencode\np2\n(V\\u0000\np3\nVlatin1\np4\ntp5\nRp6\naNaI01\na.";
        let p = run(bytes).unwrap();
        let items = p.sequence(&p.root).unwrap();
        assert!(matches!(items[0], Value::Int(1)));
        assert!(matches!(&items[1], Value::Str(s) if &**s == "x"));
        assert!(matches!(items[2], Value::Int(1180591620717411303424)));
        assert!(matches!(items[3], Value::Int(-3)));
        assert!(matches!(items[4], Value::Float(f) if f == 1.5));
        assert_eq!(&*p.bytes(&items[5]).unwrap(), b"\x00");
        assert!(matches!(items[6], Value::None));
        assert!(matches!(items[7], Value::Bool(true)));
    }

    /// The payload of a classic exploit: the callable is a name and nothing is called.
    #[test]
    fn reduce_of_os_system_is_an_inert_object() {
        let p = run(b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.").unwrap();
        let o = p.object(&p.root).unwrap();
        assert_eq!(p.class_name(o).as_deref(), Some("os.system"));
        assert_eq!(&*p.bytes(&o.args[0]).unwrap(), b"touch /tmp/pwned");
    }

    #[test]
    fn protocol_4_frames_stack_global_and_memoize() {
        // pickle.dumps({'k': b'ab'}, protocol=4) with a STACK_GLOBAL'd class around it.
        let bytes = b"\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00\x8c\x04m.od\x94\x8c\x01C\x94\x93\x94)\x81\x94}\x94\x8c\x01k\x94C\x02ab\x94sb.";
        let p = run(bytes).unwrap();
        let o = p.object(&p.root).unwrap();
        assert_eq!(p.class_name(o).as_deref(), Some("m.od.C"));
        assert!(o.state.is_some());
    }

    #[test]
    fn limits_refuse_hostile_pickles() {
        // A list that appends itself forever would be fine; counting objects stops growth.
        let mut bomb = b"]".to_vec();
        for _ in 0..100 {
            bomb.extend(b"2a");
        }
        bomb.push(b'.');
        let limits = Limits { objects: 50, ..Limits::default() };
        let err = load(&Blob::Memory(Arc::new(bomb)), 0, limits).unwrap_err();
        assert!(err.0.contains("more than 50 objects"), "{err}");
        // A length past the end allocates nothing; one past the budget is refused first.
        assert_eq!(run(b"B\xff\xff\xff\x00").unwrap_err().0, "pickle is truncated");
        let err = run(b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f").unwrap_err();
        assert!(err.0.contains("bytes of strings"), "{err}");
        let err = run(b"\x80\x02h\x07.").unwrap_err();
        assert!(err.0.contains("memo entry 7"), "{err}");
        let nones = [vec![b'N'; 100], vec![b'.']].concat();
        let err = load(&Blob::Memory(Arc::new(nones)), 0, limits).unwrap_err();
        assert!(err.0.contains("more than 50 values"), "{err}");
        let deep = [vec![b'('; 5000], vec![b'.']].concat();
        assert!(run(&deep).unwrap_err().0.contains("MARKs"));
        assert!(run(b"\x80\x02").unwrap_err().0.contains("truncated"));
    }

    #[test]
    fn string_literals() {
        assert_eq!(python_string_literal(b"'a\\'b\\x00\\n'").unwrap(), b"a'b\x00\n");
        assert_eq!(raw_unicode_escape(b"a\\u00e9\\U0001F600"), "a\u{e9}\u{1F600}");
    }
}
